"""A pre-scan of an untrusted pickle's opcodes: refuse structures that cost far more to use than to store.

Even an unpickler that builds only plain containers (``torch.load(weights_only=True)``, the CIFAR-10 restricted
unpickler) can be made to hang: the memo lets a pickle refer to one object many times, so ``t = (t, t)`` repeated
40 times is a 500-byte pickle whose hash, repr or ``np.asarray`` walks 2⁴⁰ nodes; tuples nested 10⁶ deep are
hashed by recursion in C. This module replays the pickle's stack machine on placeholders — nothing is built, no
global is imported — and measures, for every object, how many nodes it spans when expanded as a tree and how
deeply it nests. Real files are shallow trees: a state dict is a dict of name -> tensor rebuild, a CIFAR-10
batch a dict of an array and two lists (both 6 levels, spanning fewer nodes than they have opcodes); a memo
re-use there adds a string, a global or a storage, not a whole subtree again and again.
"""

from __future__ import annotations

import io
import pickletools
from typing import Any

MAX_DEPTH = 64            # a torch state dict and a CIFAR-10 batch nest 6 deep
NODES_PER_OP = 4          # an object may span at most this many nodes per opcode of the pickle (+ MAX_EXTRA)
MAX_EXTRA = 1024
MAX_OPS = 1 << 20         # ~30 opcodes per tensor of a state dict: 35,000 tensors (a U-Net has ~300-700)

_GET = {"GET", "BINGET", "LONG_BINGET"}
_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_GROW = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}  # fill the object below them in place
_NO_STACK = {"PROTO", "FRAME", "STOP"}


class _Node:
    """A placeholder for one object the pickle builds; ``children`` are the objects it holds.

    About 100 bytes each (a tuple until the object is filled in place): the scan holds one per opcode at most.
    """

    __slots__ = ("children", "size", "depth")

    def __init__(self, children: tuple[_Node, ...]) -> None:
        self.children: tuple[_Node, ...] | list[_Node] = children
        self.size = 0   # nodes spanned when expanded as a tree; 0 until measured, -1 while being measured
        self.depth = 0


_MARK = object()


class _Refused(Exception):
    """A well-formed pickle whose shape is refused."""


def check_pickle(data: bytes, name: str, error: type[ValueError] = ValueError,
                 max_ops: int = MAX_OPS, count: int = 1) -> None:
    """Refuse ``count`` consecutive pickles in ``data`` unless each object spans few nodes and nests shallowly.

    An object may expand to at most NODES_PER_OP × (opcodes) + MAX_EXTRA nodes and nest MAX_DEPTH deep; the
    pickles may hold at most ``max_ops`` opcodes. Anything else — including a pickle the scan cannot parse —
    is an ``error`` naming ``name``. Reading stops at the last STOP, so data after it (raw storages) is not read.
    """
    try:
        _check(data, max_ops, count)
    except _Refused as e:
        raise error(f"{name}: {e}") from None
    except (ValueError, IndexError, KeyError, EOFError) as e:  # genops' parse errors, a stack or memo underflow
        raise error(f"{name}: a damaged or malformed pickle ({type(e).__name__}: {str(e)[:200]})") from None


def _check(data: bytes, max_ops: int, count: int) -> None:
    """Replay up to ``count`` pickles, then measure every object they made; _Refused says why not."""
    stream = io.BytesIO(data)
    nodes: list[_Node] = []
    ops = 0
    for _ in range(count):
        if stream.tell() == len(data):
            break  # fewer pickles than allowed: a plain pickle where a legacy torch file holds five
        ops = _replay(stream, ops, max_ops, nodes)
    limit = NODES_PER_OP * ops + MAX_EXTRA
    size, depth = _largest(nodes, limit)
    if size > limit:
        raise _Refused(f"a pickled object refers to shared parts so often that it spans more than {limit} "
                       f"objects from {ops} opcodes (a pickle bomb?); a real file's objects are plain trees")
    if depth > MAX_DEPTH:
        raise _Refused(f"a pickled object nests more than {MAX_DEPTH} levels deep; a real file's nest a few")


def _replay(stream: io.BytesIO, ops: int, max_ops: int, nodes: list[_Node]) -> int:
    """Run one pickle's opcodes on placeholders, adding every object made to ``nodes``; the opcodes counted so far."""
    stack: list[Any] = []
    memo: dict[int, _Node] = {}
    for op, arg, _ in pickletools.genops(stream):
        ops += 1
        if ops > max_ops:
            raise _Refused(f"more than {max_ops} pickle opcodes, far more than a real file holds")
        _step(op, arg, stack, memo, nodes)
    return ops


def _step(op: pickletools.OpcodeInfo, arg: Any, stack: list[Any], memo: dict[int, _Node],
          nodes: list[_Node]) -> None:
    """The effect of one opcode on the placeholder stack and memo (IndexError/KeyError: a malformed pickle)."""
    if op.name in _NO_STACK:
        return
    if op.name == "MARK":
        stack.append(_MARK)
    elif op.name in _GET:
        stack.append(memo[arg])
    elif op.name in _PUT or op.name == "MEMOIZE":
        top = stack[-1]
        if top is _MARK:
            raise ValueError("memoized a mark")
        memo[len(memo) if op.name == "MEMOIZE" else arg] = top
    elif op.name == "DUP":
        stack.append(stack[-1])
    elif op.name == "POP":
        stack.pop()
    elif op.name == "POP_MARK":
        _pop_to_mark(stack)
    else:
        popped = _pop_operands(op, stack)
        if op.name in _GROW:
            target = stack[-1]
            if target is _MARK:
                raise ValueError(f"{op.name} on a mark")
            if isinstance(target.children, tuple):
                target.children = list(target.children)  # filled in place, perhaps one item at a time
            target.children.extend(popped)
        elif op.stack_after:
            node = _Node(tuple(popped))
            nodes.append(node)
            stack.append(node)


def _pop_operands(op: pickletools.OpcodeInfo, stack: list[Any]) -> list[_Node]:
    """Pop what ``op`` consumes (all down to the mark, then its fixed operands), leaving a GROW target on top."""
    before = list(op.stack_before)
    popped: list[_Node] = []
    if pickletools.markobject in before:
        popped = _pop_to_mark(stack)
        before = before[: before.index(pickletools.markobject)]
    if op.name in _GROW:
        before = before[1:]  # the list, dict, set or object being filled stays on the stack
    for _ in before:
        item = stack.pop()
        if item is _MARK:
            raise ValueError(f"{op.name} found a mark where it expected an object")
        popped.append(item)
    return popped


def _pop_to_mark(stack: list[Any]) -> list[_Node]:
    """Pop everything above the topmost mark, and the mark."""
    items = []
    while (item := stack.pop()) is not _MARK:
        items.append(item)
    return items


def _largest(nodes: list[_Node], limit: int) -> tuple[int, int]:
    """The largest expanded size (saturated past ``limit``) and the deepest nesting of any object.

    Iterative, and each object is measured once: the walk itself must not be what the bounds protect against.
    """
    for root in nodes:
        todo: list[tuple[_Node, bool]] = [(root, False)]
        while todo:
            node, children_done = todo.pop()
            if children_done:
                node.size = min(1 + sum(c.size for c in node.children), limit + 1)
                node.depth = min(1 + max((c.depth for c in node.children), default=0), MAX_DEPTH + 1)
            elif node.size < 0:
                raise _Refused("a pickled object contains itself; a real file's objects are plain trees")
            elif node.size == 0:
                node.size = -1  # on the path from the root
                todo.append((node, True))
                todo.extend((c, False) for c in node.children if c.size <= 0)
    return max((n.size for n in nodes), default=0), max((n.depth for n in nodes), default=0)
