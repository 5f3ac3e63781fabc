"""Command-line entry points (console scripts): flags are parsed here, the work is done by the library."""
