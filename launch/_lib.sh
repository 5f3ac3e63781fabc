# shellcheck shell=bash disable=SC2034,SC2088  # (globals set for the sourcing script; a literal ~ on purpose)
# Sourced by launch/*.sh (not run on its own): argument handling and quoting shared by the launchers.
# Each launcher sets USAGE, parses its own options (all before WORKDIR), then calls parse_run_args "$@".

die() { echo "$(basename "$0"): error: $*" >&2; echo "usage: $USAGE" >&2; exit 2; }

# The words joined by spaces, each one that needs it quoted with printf %q: a line a shell reads back as the same
# words (words made only of characters no shell treats specially, such as --config.a.b=size=large,run=long, stay bare).
qjoin() {
  local out="" a w
  for a in "$@"; do
    if [[ -n "$a" && "$a" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then w=$a; else w=$(printf '%q' "$a"); fi
    out+="${out:+ }$w"
  done
  printf '%s' "$out"
}

# One string as a single-quoted shell word (for a whole remote command line).
sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# A path on a remote shell: a leading ~/ stays unquoted so that it expands there.
qpath() {
  if [[ "$1" == "~" ]]; then printf '~'
  elif [[ "$1" == "~/"* ]]; then printf '~/%s' "$(printf '%q' "${1#\~/}")"
  else printf '%q' "$1"; fi
}

# A YAML double-quoted scalar (JSON string syntax) for an arbitrary string.
yq() {
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}; s=${s//$'\t'/\\t}; s=${s//$'\n'/\\n}
  printf '"%s"' "$s"
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

# WORKDIR [CONFIG_ARG] [--flag ...] -> WORKDIR, CONFIG_SUFFIX (":CONFIG_ARG" or ""), TRAIN_FLAGS (verbatim).
parse_run_args() {
  [[ $# -ge 1 ]] || die "WORKDIR is required"
  [[ -n "$1" && "$1" != -* ]] || die "expected WORKDIR, got '$1' (launcher options go before WORKDIR)"
  WORKDIR=$1; shift
  CONFIG_SUFFIX=""
  if [[ $# -gt 0 && "$1" != --* ]]; then CONFIG_SUFFIX=":$1"; shift; fi
  TRAIN_FLAGS=("$@")
}
