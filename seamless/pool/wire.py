"""Work and outcomes as frames: what a ``submit``, ``result`` or ``error`` frame carries.

The frame format itself is ``protocol``; this module maps seamless's objects onto it:

- ``pack_work(work, checksum)`` -> (header, inline buffers, descriptors, keep): the code text,
  parameters, argument and ``.globals`` encodings and ``.modules`` entries.  A buffer under
  ``INLINE_MAX`` travels inline; a larger one travels as its segment's descriptor (an input
  built while the pool runs, or a result passed on: no copy), else it is copied into a new
  segment here (one copy, no hash: its checksum is known).  ``keep`` holds the segments that
  only the frame needs (new ones, a worker's claimed result): the sender closes them once the
  frame is sent.  A segment whose logical bytes do not start at byte 0 of its file (a result
  born by the numpy allocator, with its header in front) has the buffer-table location
  ``{"fd": index, "offset": bytes}`` instead of the bare descriptor index.
- Code text crosses a channel once: ``pack_work(..., sent=set)`` sends a function's code as its
  checksum alone when the set says this worker already has it (the parent keeps one set per
  worker process), and ``unpack_work(frame, codebook)`` looks it up in the worker's
  ``codebook`` (checksum -> FunctionCode), filled by the first submit that carried the text.
- ``unpack_work(frame)`` rebuilds the ``Work`` on the other side; segment buffers are mapped
  read-only (populated: a body reads its inputs) and their descriptors closed at once (the
  mapping keeps the memory).
- ``unpack_result(frame, work, on_release)``: a segment result stays mapped read-only; when the
  parent drops it, ``on_release(fd)`` gets its descriptor (the pool sends it back to the
  worker that made it: the ``recycle`` frame).
- ``pack_result`` / ``unpack_result``, ``pack_failure`` / ``unpack_failure`` likewise.
- What a worker cannot deliver becomes the request's failure: ``undeliverable`` turns a failed
  ``pack_result`` or an unencodable result frame into a failure, and ``fitting_failure`` cuts a
  failure text whose ``error`` frame would exceed the 64 MiB frame limit (``frame_error``) to
  its first and last 64 KiB.

Ownership: descriptors received with a frame belong to the receiver; ``Segment.from_fd`` takes
them over.  No pickle anywhere: JSON headers, canonical bytes, failure text.
"""

from __future__ import annotations

from ..code import FunctionCode, ModuleEntry
from ..encoding import ClaimedBuffer, Encoded, PendingChecksum, resolved
from ..execution.runner import Failure, Work
from .protocol import MAX_FRAME, encode_frame

__all__ = ["INLINE_MAX", "pack_work", "unpack_work", "pack_result", "unpack_result",
           "pack_failure", "unpack_failure", "frame_error", "undeliverable", "fitting_failure"]

INLINE_MAX = 1 << 20
CUT_KEEP = 64 * 1024  # bytes kept at each end of a failure text too long for its frame


def _shm_array():
    from seamless._ipc import shm_array

    return shm_array


def _extra_copy_injected() -> bool:
    """The benchmark gate's self-test hook (bench/conftest.py): one more copy of every input."""
    import sys

    ipc = sys.modules.get("seamless._ipc")
    return ipc is not None and ipc._inject_extra_copy


class _Packer:
    """Collects the buffer table, inline buffers and descriptors of one frame."""

    def __init__(self):
        self.table: list = []
        self.inline: list = []
        self.fds: list = []
        self.keep: list = []

    def add(self, enc: Encoded, is_input: bool = False) -> int:
        if type(enc.buffer) is ClaimedBuffer:
            seg = enc.buffer.segment
            self.keep.append(seg)
            return self._add_segment(enc.checksum, seg)
        buffer = enc.buffer
        if type(buffer) is bytes:  # the json/str/bytes kinds: inline unless huge
            view, n = buffer, len(buffer)
        else:
            view = memoryview(buffer).cast("B")
            n = view.nbytes
        if n < INLINE_MAX:
            self.inline.append(view)
            self.table.append([_checksum_field(enc.checksum), n, "inline"])
            return len(self.table) - 1
        view = memoryview(buffer).cast("B")
        shm_array = _shm_array()
        seg = shm_array.segment_of(enc.buffer)
        if seg is None or seg.closed or (is_input and _extra_copy_injected()):
            seg = shm_array.Segment.create(n, f"a {n}-byte buffer sent to a worker")
            seg.fill(view)
            self.keep.append(seg)
        return self._add_segment(enc.checksum, seg)

    def _add_segment(self, checksum, seg) -> int:
        where = len(self.fds) if seg.offset == 0 else {"fd": len(self.fds), "offset": seg.offset}
        self.table.append([_checksum_field(checksum), seg.size, where])
        self.fds.append(seg.fd)
        return len(self.table) - 1


def _checksum_field(checksum):
    """A known checksum as a plain ``str`` (the JSON encoder then needs no hook for the
    ``Checksum`` subclass); a pending one is waited for (dispatch happens after it is known,
    so this does not block); None (a worker's deferred result) stays None."""
    if type(checksum) is PendingChecksum:
        checksum = resolved(checksum)
    return checksum if checksum is None or type(checksum) is str else str.__str__(checksum)


def _buffer(frame, index: int, inline_iter, keep: list, populate=False, on_release=None):
    checksum, length, where = frame.header["buffers"][index]
    if where == "inline":
        return next(inline_iter)
    fd_index, offset = (where["fd"], where["offset"]) if isinstance(where, dict) else (where, 0)
    seg = _shm_array().Segment.from_fd(frame.fds[fd_index], length, offset=offset,
                                       on_release=on_release)
    view = seg.readonly(populate=populate)
    keep.append(seg)
    return view


def _code_field(code: FunctionCode, sent: set | None):
    """The code as a dict, or as its checksum alone once this channel has carried it."""
    if sent is not None:
        if code.checksum in sent:
            return _checksum_field(code.checksum)
        sent.add(code.checksum)
    return {"name": code.name, "text": code.text, "checksum": _checksum_field(code.checksum),
            "filename": code.filename, "first_line": code.first_line}


def _code_from(field, codebook: dict | None) -> FunctionCode:
    if isinstance(field, str):
        if codebook is None or field not in codebook:
            raise ValueError(f"submit refers to code {field} that this channel never carried")
        return codebook[field]
    code = FunctionCode(field["name"], field["text"], field["checksum"], field["filename"],
                        field["first_line"])
    if codebook is not None:
        codebook[code.checksum] = code
    return code


def pack_work(work: Work, checksum: str, sent: set | None = None):
    """(header, inline, fds, keep) of a ``submit`` / ``nested-submit`` frame.

    ``sent``: checksums of the code the receiver already has (updated here); None sends every
    code text."""
    p = _Packer()
    header = {
        "checksum": _checksum_field(checksum),
        "name": work.name,
        "code": _code_field(work.code, sent),
        "params": [list(x) for x in work.params],
        "arguments": {n: [e.kind, p.add(e, True)] for n, e in work.arguments.items()},
        "values": {n: [e.kind, p.add(e, True)] for n, e in work.values.items()},
        "functions": {n: _code_field(c, sent) for n, c in work.functions.items()},
        "modules": {n: m._asdict() for n, m in work.modules.items()},
    }
    header["buffers"] = p.table
    return header, p.inline, p.fds, p.keep


def input_buffers(work: Work) -> list:
    """The buffers of a work in buffer-table order (``pack_work``'s order): results that are
    an input, whole and unchanged, refer to it by this index instead of travelling again."""
    return [e.buffer for e in work.arguments.values()] + [e.buffer for e in work.values.values()]


def unpack_work(frame, codebook: dict | None = None):
    """(checksum, Work) from a ``submit`` / ``nested-submit`` frame.

    ``codebook``: code by checksum for frames that send code by checksum (updated here)."""
    h = frame.header
    inline = iter(frame.inline)
    keep: list = []
    order = sorted(
        [(idx, "arguments", n, kind) for n, (kind, idx) in h["arguments"].items()] +
        [(idx, "values", n, kind) for n, (kind, idx) in h["values"].items()])
    decoded = {"arguments": {}, "values": {}}
    for idx, where, name, kind in order:
        buf = _buffer(frame, idx, inline, keep, populate=True)
        decoded[where][name] = Encoded(kind, h["buffers"][idx][0], buf)
    for seg in keep:
        seg.close()  # the read-only mappings keep the memory; the descriptor is not needed
    work = Work(h["name"], _code_from(h["code"], codebook), tuple(tuple(x) for x in h["params"]),
                decoded["arguments"], decoded["values"],
                {n: _code_from(c, codebook) for n, c in h["functions"].items()},
                {n: ModuleEntry(**m) for n, m in h["modules"].items()})
    return h["checksum"], work


def pack_result(result: Encoded, duration: float, inputs=(), copied: int = 0):
    """(header, inline, fds, keep) of a ``result`` frame.

    ``inputs``: the submit's buffers (``input_buffers``); a result that is one of them goes
    back as a reference to it: no copy, no descriptor, and the parent's result is a view of
    the very memory it sent.
    """
    p = _Packer()
    for i, buf in enumerate(inputs):
        if buf is result.buffer:
            p.table.append([_checksum_field(result.checksum), memoryview(buf).nbytes,
                            ["input", i]])
            index = 0
            break
    else:
        index = p.add(result)
        # A result segment now belongs to the parent, which sends it back when it is dropped:
        # the worker closes its descriptor once the frame is sent, so it can never return to
        # the worker's own free list while the parent still maps it.
        seg = _shm_array().segment_of(result.buffer) if type(result.buffer) is not \
            ClaimedBuffer and memoryview(result.buffer).nbytes >= INLINE_MAX else None
        if seg is not None and seg not in p.keep:
            p.keep.append(seg)
    header = {"kind": result.kind, "buffer": index, "duration": duration, "buffers": p.table}
    if copied:
        header["copied"] = copied  # bytes the worker copied into segments for this result
    return header, p.inline, p.fds, p.keep


def unpack_result(frame, work: Work | None = None, on_release=None) -> tuple:
    """(Encoded, duration) from a ``result`` frame; a segment result stays mapped read-only.

    ``work``: what was submitted, for results that refer to one of its inputs;
    ``on_release(fd)``: takes a segment result's descriptor once the result is dropped."""
    h = frame.header
    keep: list = []
    where = h["buffers"][h["buffer"]][2]
    if isinstance(where, list):
        buf = input_buffers(work)[where[1]]
        return Encoded(h["kind"], h["buffers"][h["buffer"]][0], buf), h["duration"]
    buf = _buffer(frame, h["buffer"], iter(frame.inline), keep, on_release=on_release)
    # A segment result keeps its descriptor open while the mapping lives (``segment_of``
    # finds it again to resend it when the array is chained); an inline one is copied out of
    # the frame body, so the handle does not pin the whole frame.
    if not keep:
        buf = bytes(buf)
    checksum = h["buffers"][h["buffer"]][0]
    if checksum is None:  # deferred: a result-checksum frame follows
        checksum = PendingChecksum()
    return Encoded(h["kind"], checksum, buf), h["duration"]


def pack_failure(failure: Failure) -> dict:
    return {"summary": failure.summary, "text": failure.text}


def unpack_failure(frame) -> Failure:
    return Failure(frame.header["summary"], frame.header["text"])


def frame_error(kind: str, id: int, header: dict, inline: list, fds: list):
    """Why this frame could not be sent (above the frame limit, a header JSON cannot encode),
    as the exception ``encode_frame`` raises; None when it can."""
    try:
        encode_frame(kind, id, header, inline, len(fds))
    except (TypeError, ValueError) as exc:
        return exc
    return None


def undeliverable(name: str, exc: BaseException) -> Failure:
    """The failure of a body that ran but whose result could not be sent to the parent."""
    line = f"{type(exc).__name__}: {exc}"
    return Failure(line, f"the result of {name} could not be sent to the parent process: "
                         f"{line}\n")


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB"


def _cut(text: str, marker: str) -> str:
    """``text`` as valid UTF-8 (lone surrogates escaped); if longer than twice ``CUT_KEEP``
    bytes, only its first and last ``CUT_KEEP`` bytes around ``marker``."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= 2 * CUT_KEEP:
        return data.decode("utf-8")
    cut = marker.format(_mb(len(data) - 2 * CUT_KEEP))
    return (data[:CUT_KEEP].decode("utf-8", "ignore") + cut
            + data[-CUT_KEEP:].decode("utf-8", "ignore"))


def fitting_failure(failure: Failure) -> Failure:
    """``failure`` itself when its ``error`` frame can be sent; else with its summary (the
    exception message) and its text cut to their first and last 64 KiB, the text starting
    with a line that says what was cut and why.  The result always fits: at most 6 JSON bytes
    per byte kept."""
    if frame_error("error", 0, pack_failure(failure), [], []) is None:
        return failure
    summary_size = len(failure.summary.encode("utf-8", "surrogatepass"))
    text_size = len(failure.text.encode("utf-8", "surrogatepass"))
    if max(summary_size, text_size) <= 2 * CUT_KEEP:  # short, but not valid UTF-8
        return failure._replace(summary=_cut(failure.summary, ""), text=_cut(failure.text, ""))
    if summary_size > 2 * CUT_KEEP:
        what, size = "exception message", summary_size
    else:
        what, size = "failure text", text_size
    note = (f"[the {what} is {_mb(size)}; it was cut to the first and last "
            f"{CUT_KEEP >> 10} KiB, as its error frame would exceed the {MAX_FRAME >> 20} MiB "
            f"frame limit]\n")
    return failure._replace(summary=_cut(failure.summary, " [... {} cut ...] "),
                            text=note + _cut(failure.text, "\n[... {} cut ...]\n"))
