"""Downstream uses of a trained model: conversion / bot tasks, detectors, next-item retrieval."""
