"""No hang after a backend error: SGLang's stream executors made to end a program with its error.

When a backend call fails, SGLang's `StreamExecutor` stores the error and stops its worker thread;
anything the program submits after that is queued for a thread that no longer runs, so the next
`sync()` (`state.text()`, `state.error()`, a join) or variable read waits forever. `install()`
(idempotent; every aspd_lang backend calls it) changes exactly that: the failed command is named on
the error, a submit to a stopped executor raises `ProgramRunError` at once (the program function
ends with it, so `run()` raises it), `sync`/`get_var` stop waiting when the worker is gone, and a
join over a failed branch fails with that branch's error.
Programs that run without errors are untouched.
"""

from __future__ import annotations

import threading

from sglang.lang.interpreter import StreamExecutor
from sglang.lang.ir import SglCommitLazy, SglConcateAndAppend, SglExprList, SglGen, SglSelect

from runtime.errors import UserError

_POLL_S = 0.05
_installed = threading.Lock()


class ProgramRunError(UserError, RuntimeError):
    """A backend error that ended a program, as one line naming the command that failed."""

    var: str | None = None  # the gen's or select's variable, when one failed


def describe(expr) -> str:
    """A command as the program wrote it (what an error names)."""
    if isinstance(expr, SglGen):
        return f"gen({expr.name!r})"
    if isinstance(expr, SglSelect):
        return f"select({expr.name!r})"
    if isinstance(expr, SglConcateAndAppend):
        return f'join("concate_and_append") of {len(expr.states)} branches'
    if isinstance(expr, SglCommitLazy):
        return "the prefix commit before a fork or join"
    if isinstance(expr, SglExprList):
        inner = [describe(x) for x in expr.expr_list if isinstance(x, SglGen | SglSelect)]
        return inner[0] if inner else "text"
    return type(expr).__name__.removeprefix("Sgl").lower()


def one_line(e: BaseException) -> str:
    """An error's message on one line (an HTTP error body is a dict: its message and status)."""
    arg = e.args[0] if e.args else e
    if isinstance(arg, dict) and isinstance(arg.get("error"), dict):
        err = arg["error"]
        return f"{err.get('code', '')} {err.get('message', '')}".strip()
    return " ".join(str(e).split()) or type(e).__name__


def failure(ex: StreamExecutor) -> ProgramRunError | None:
    """The executor's error as a ProgramRunError (None while it has none)."""
    e = ex.error_
    if e is None:
        return None
    if isinstance(e, ProgramRunError):
        return e
    err = ProgramRunError(f"{getattr(e, 'aspd_node', 'a command')} failed: {one_line(e)}")
    err.var = getattr(e, "aspd_var", None)
    return err


def _dead(ex: StreamExecutor) -> bool:
    return ex.use_thread and not ex.worker.is_alive()


def install() -> None:
    if getattr(StreamExecutor, "_aspd_guarded", False):
        return
    with _installed:
        if getattr(StreamExecutor, "_aspd_guarded", False):
            return
        execute, submit, get_var = StreamExecutor._execute, StreamExecutor.submit, StreamExecutor.get_var

        def _execute(self, expr):
            if isinstance(expr, SglConcateAndAppend):  # a failed branch, not the join, is the error
                for st in expr.states:
                    st.stream_executor.sync()
                    err = failure(st.stream_executor)
                    if err is not None:
                        raise err
            try:
                return execute(self, expr)
            except Exception as e:
                if not hasattr(e, "aspd_node"):  # the innermost command names the failure
                    try:
                        e.aspd_node, e.aspd_var = describe(expr), getattr(expr, "name", None)
                    except AttributeError:
                        pass
                raise

        def _submit(self, expr):
            err = failure(self)
            if err is not None:  # its worker has stopped: nothing queued now would ever run
                raise err from (self.error_ if err is not self.error_ else None)
            return submit(self, expr)

        def _sync(self):
            if not self.use_thread:
                return
            q = self.queue
            with q.all_tasks_done:  # queue.join(), but not for a worker that has stopped
                while q.unfinished_tasks and self.worker.is_alive():
                    q.all_tasks_done.wait(_POLL_S)

        def _get_var(self, name):
            event = self.variable_event.get(name)
            while event is not None and not event.wait(_POLL_S):
                if _dead(self):
                    raise failure(self) or ProgramRunError(f"variable {name!r} was never set: its executor ended")
            if name not in self.variables and (err := failure(self)) is not None:  # the command that sets it failed
                raise err
            return get_var(self, name)

        StreamExecutor._execute = _execute
        StreamExecutor.submit = _submit
        StreamExecutor.sync = _sync
        StreamExecutor.get_var = _get_var
        StreamExecutor._aspd_guarded = True
