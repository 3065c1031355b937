"""Pure-Python twins of the compiled modules of seamless._ipc: same API and semantics, slower.

Selected by seamless._ipc under SEAMLESS_PUREPYTHON=1 or when a compiled module fails to
import; they are the executable specification of the Cython code.
"""
