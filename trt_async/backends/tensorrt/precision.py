"""Which parts of a graph stay in fp32 when the rest runs in fp16 or bf16.

fp16 tops out at 65504 and keeps 11 significant bits. In encoder and decoder graphs a few
patterns overflow or lose their meaning there: LayerNorm/RMSNorm statistics (the squares
of hidden states, their mean, the square root), Softmax, reductions, and the rotary
position angles (``position * inv_freq`` reaches thousands, where fp16's spacing is 4 or 8,
so ``sin``/``cos`` of it are noise) with the products that apply them. Both TensorRT
majors are steered off fp16 for exactly those:

* 10.x (weakly typed, ``FP16``/``BF16`` flags): the layers get ``precision`` and output
  types fp32 with ``OBEY_PRECISION_CONSTRAINTS``.
* 11.x (strongly typed): the graph is converted to fp16 with those nodes on the
  converter's block list, so they keep fp32 types and weights.

The rule runs on a small neutral description of the graph, built from the ONNX nodes for
11.x and from the parsed TensorRT layers for 10.x, so both majors keep the same set.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: Op kinds whose results leave fp16's range or precision: always fp32, and their results
#: carry fp32 on to the element-wise ops that use them.
SEEDS = frozenset(
    {
        "LayerNormalization",
        "SimplifiedLayerNormalization",
        "RMSNormalization",
        "GroupNormalization",
        "InstanceNormalization",
        "Softmax",
        "LogSoftmax",
        "Pow",
        "Sqrt",
        "Exp",
        "Log",
        "Sin",
        "Cos",
        "CumSum",
        "ReduceMean",
        "ReduceSum",
        "ReduceSumSquare",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
    }
)
#: Element-wise and data-movement ops that carry an fp32 value on unchanged in meaning.
CARRY = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Reciprocal",
        "Neg",
        "Abs",
        "Max",
        "Min",
        "Clip",
        "Where",
        "Reshape",
        "Unsqueeze",
        "Squeeze",
        "Transpose",
        "Expand",
        "Concat",
        "Slice",
        "Gather",
        "Identity",
        "Flatten",
        "Split",
        "Tile",
        # A float-to-float Cast (``cos.to(x.dtype)`` in an fp32 export) changes nothing.
        "Cast",
    }
)
#: Where sums of fp32 products meet (the rotary ``q * cos + rotate(q) * sin``).
_SUMS = frozenset({"Add", "Sub"})
#: Seeds whose inputs must already be exact: the whole computation of their input
#: (position ids times inverse frequencies) stays fp32.
_ANGLE_OPS = frozenset({"Sin", "Cos"})


@dataclass(frozen=True)
class OpNode:
    """One operation: its name, what kind of op it is (ONNX op type names) and the names
    of the tensors it reads and writes."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def keep_fp32(nodes: Sequence[OpNode], neutral: Callable[[str], bool]) -> set[str]:
    """Names of the nodes to keep in fp32.

    ``neutral(tensor)``: the tensor carries no precision question (a constant, a weight,
    an integer or boolean tensor, a graph input).

    * Every seed is kept, and for ``Sin``/``Cos`` everything that computes their input.
    * A carrying op that reads a kept value is kept; its own result carries on only if
      all its other inputs are kept values or neutral (``x * rsqrt(var)`` is kept, but
      the normalised ``x`` it makes returns to fp16).
    * An ``Add``/``Sub`` whose every non-neutral input comes from a kept node is kept
      (the sum of the rotary products).
    """
    producer = {t: n for n in nodes for t in n.outputs}
    consumers: dict[str, list[OpNode]] = defaultdict(list)
    for n in nodes:
        for t in n.inputs:
            consumers[t].append(n)

    kept: set[str] = set()
    carrying: set[str] = set()  # tensors holding fp32 values that carry on

    def cone(tensors: Iterable[str]) -> None:
        stack = [t for t in tensors if not neutral(t)]
        while stack:
            node = producer.get(stack.pop())
            if node is None or node.name in kept:
                continue
            kept.add(node.name)
            carrying.update(node.outputs)
            stack.extend(t for t in node.inputs if not neutral(t))

    queue: list[OpNode] = []
    for n in nodes:
        if n.kind in SEEDS:
            kept.add(n.name)
            carrying.update(n.outputs)
            queue.append(n)
            if n.kind in _ANGLE_OPS:
                cone(n.inputs)
    queue.extend(n for n in nodes if n.name in kept and n not in queue)

    while queue:
        node = queue.pop()
        for t in node.outputs:
            if t not in carrying:
                continue
            for user in consumers.get(t, []):
                if user.kind not in CARRY and user.kind not in SEEDS:
                    continue
                kept.add(user.name)
                others = [i for i in user.inputs if not neutral(i)]
                if all(i in carrying for i in others) and not set(user.outputs) <= carrying:
                    carrying.update(user.outputs)
                    queue.append(user)

    # Sums of kept products, until nothing changes.
    changed = True
    while changed:
        changed = False
        for n in nodes:
            if n.kind not in _SUMS or n.name in kept:
                continue
            others = [i for i in n.inputs if not neutral(i)]
            if others and all(producer.get(i) and producer[i].name in kept for i in others):
                kept.add(n.name)
                changed = True
    return kept


# -- ONNX -----------------------------------------------------------------------------------

_CONSTANT_OPS = frozenset({"Constant", "ConstantOfShape"})


def onnx_nodes(model: Any) -> tuple[list[OpNode], Callable[[str], bool]]:
    """The neutral description of an ONNX model's main graph (nodes must have names:
    see :func:`name_nodes`) and its ``neutral`` predicate. Types come from ONNX shape
    inference where the model does not record them."""
    import onnx

    graph = model.graph
    types: dict[str, int] = {}
    for v in [*graph.input, *graph.output, *graph.value_info]:
        types[v.name] = v.type.tensor_type.elem_type
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        for v in inferred.graph.value_info:
            types.setdefault(v.name, v.type.tensor_type.elem_type)
    except Exception:  # inference is best effort (large or custom graphs)
        pass
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    constant = {i.name for i in graph.initializer}
    for n in graph.node:
        if n.op_type in _CONSTANT_OPS or (n.input and all(i in constant for i in n.input)):
            constant.update(n.output)

    def neutral(tensor: str) -> bool:
        if not tensor or tensor in constant:
            return True
        kind = types.get(tensor)
        return kind is not None and kind != 0 and kind not in floats

    nodes = [
        OpNode(n.name, n.op_type, tuple(i for i in n.input if i), tuple(n.output))
        for n in graph.node
        if n.op_type not in _CONSTANT_OPS
    ]
    return nodes, neutral


def name_nodes(model: Any) -> None:
    """Give every unnamed node of the main graph a unique name (block lists go by name)."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in taken:
                name += "_"
            n.name = name
            taken.add(name)


# -- TensorRT 10 layers ---------------------------------------------------------------------


def _layer_kind(trt: Any, layer: Any) -> str:
    """The ONNX op kind of a parsed TensorRT layer (``Other`` when it does not matter)."""
    lt = trt.LayerType
    t = layer.type
    simple = {
        "NORMALIZATION": "LayerNormalization",
        "SOFTMAX": "Softmax",
        "REDUCE": "ReduceSum",
        "CUMULATIVE": "CumSum",
        "MATRIX_MULTIPLY": "MatMul",
        "SELECT": "Where",
        "CAST": "Cast",
        "CONSTANT": "Constant",
        "SHUFFLE": "Reshape",
        "CONCATENATION": "Concat",
        "SLICE": "Slice",
        "GATHER": "Gather",
        "IDENTITY": "Identity",
        "SQUEEZE": "Squeeze",
        "UNSQUEEZE": "Unsqueeze",
    }
    for name, kind in simple.items():
        if t == getattr(lt, name, None):
            return kind
    if t == lt.UNARY:
        layer.__class__ = trt.IUnaryLayer  # the bindings hand out the base ILayer
        ops = {
            "SQRT": "Sqrt",
            "EXP": "Exp",
            "LOG": "Log",
            "SIN": "Sin",
            "COS": "Cos",
            "RECIP": "Reciprocal",
            "NEG": "Neg",
            "ABS": "Abs",
        }
        return next(
            (k for n, k in ops.items() if layer.op == getattr(trt.UnaryOperation, n)), "Other"
        )
    if t == lt.ELEMENTWISE:
        layer.__class__ = trt.IElementWiseLayer
        ops = {
            "POW": "Pow",
            "SUM": "Add",
            "SUB": "Sub",
            "PROD": "Mul",
            "DIV": "Div",
            "MAX": "Max",
            "MIN": "Min",
        }
        return next(
            (k for n, k in ops.items() if layer.op == getattr(trt.ElementWiseOperation, n)),
            "Other",
        )
    return "Other"


def network_nodes(trt: Any, network: Any) -> tuple[list[OpNode], Callable[[str], bool], list[Any]]:
    """The neutral description of a parsed TensorRT network, its ``neutral`` predicate and
    the layers by index (tensors are told apart by name, which TensorRT keeps unique)."""
    floats = {trt.DataType.FLOAT, trt.DataType.HALF, getattr(trt.DataType, "BF16", None)}
    dtype: dict[str, Any] = {}
    constant: set[str] = {network.get_input(i).name for i in range(network.num_inputs)}
    nodes: list[OpNode] = []
    layers: list[Any] = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        layers.append(layer)
        ins = tuple(
            t.name for t in (layer.get_input(j) for j in range(layer.num_inputs)) if t is not None
        )
        outs_t = [layer.get_output(j) for j in range(layer.num_outputs)]
        for t in outs_t:
            dtype[t.name] = t.dtype
        outs = tuple(t.name for t in outs_t)
        kind = _layer_kind(trt, layer)
        if kind == "Constant" or (ins and all(n in constant for n in ins)):
            constant.update(outs)
        nodes.append(OpNode(str(i), kind, ins, outs))

    def neutral(tensor: str) -> bool:
        return tensor in constant or dtype.get(tensor, trt.DataType.FLOAT) not in floats

    return nodes, neutral, layers


def constrain_network(trt: Any, network: Any, config: Any) -> int:
    """TensorRT 10 with a reduced-precision flag: pin the layers :func:`keep_fp32` picks to
    fp32 (computation and float outputs) and make the builder obey. Returns how many
    layers were pinned."""
    nodes, neutral, layers = network_nodes(trt, network)
    kept = keep_fp32(nodes, neutral)
    pinned = 0
    for node in nodes:
        if node.name not in kept or node.kind in ("Cast", "Constant"):
            continue
        layer = layers[int(node.name)]
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        float_outputs = [
            j for j, t in enumerate(outputs) if t.dtype in (trt.DataType.FLOAT, trt.DataType.HALF)
        ]
        if not float_outputs:
            continue
        layer.precision = trt.float32
        for j in float_outputs:
            layer.set_output_type(j, trt.float32)
        pinned += 1
    if pinned:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return pinned
