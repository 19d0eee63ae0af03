"""aspd_lang: the DSL for serial, fork/join and adaptive generation programs.

The engine it runs on lives in `runtime` (see docs/architecture.md). The DSL itself (IR, checks,
SGLang compilation, NativeBackend) is built on top of the engine's explicit fork API
(`runtime.engine.Engine.fork`) and adaptive generation (`Engine.generate(..., mode="aspd")`).
"""

__version__ = "0.1.0"
