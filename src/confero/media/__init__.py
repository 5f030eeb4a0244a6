"""Codecs (PyAV), sources, sinks and the audio mixing math."""
