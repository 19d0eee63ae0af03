"""An adaptive chat answer: the model itself decides when to fork (ASPD).

`gen(..., adaptive=True)` lets the model write the ASPD markup; the engine then decodes the
branches it declares in parallel and joins them without re-prefill. On NativeBackend this is the
engine's own serial-parallel switching; on a plain SGLang server it is a client-side loop. With
the shipped adapter the model forks on list-like answers; the base model answers serially.

    aspd run programs/adaptive_chat.py --arg question="What are some tips for a job interview?"
"""

from aspd_lang import gen, program

ARGS = {"question": "What are the main benefits of regular exercise?"}


@program
def main(s, question):
    with s.user():
        s += question
    with s.assistant():
        s += gen("answer", max_tokens=192, adaptive=True)
