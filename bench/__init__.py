"""Benchmarks of aspd-lang: `aspd bench` (speed and quality side by side on a question set) and the
scripts that measure the engine, the DSL programs, the server and the shipped adapter."""
