"""A detector's neck: the feature maps its detection head reads, one per scale, found from the graph's structure.

A YOLO head (ultralytics' Detect, YOLOv5's) runs small per-scale branches of convolutions on the neck's maps,
flattens each to anchors and concatenates the scales along the anchor axis. So, walking back from the output:
1. the anchor Concats: Concat nodes whose output has the output's anchor count A on its concat axis (YOLOv8
   has two, boxes and classes; their inputs are the branches' ends);
2. each branch end's scale: the spatial size of the first candidate layer met walking back from it;
3. per scale, the nearest tensor that every path from the image to that scale's ends passes through (their
   common dominator) and that a Conv reads: the input of the head's first convolutions. (The head's own last
   tensors dominate their ends too, but no Conv reads them.)
Nothing here reads ultralytics' node names.
"""

from __future__ import annotations

from onnxcam.model.graph import ancestors, data_inputs

_CONVS = {"Conv", "ConvInteger", "QLinearConv"}


def neck_layers(graph, image: str, output: str, producers: dict, shapes: dict, layers: list) -> list:
    """Names of the neck maps (finest scale first) among the candidate `layers`, or [] when the head does not
    have this structure."""
    anchors = max(shapes[output][1:])
    ancestry = ancestors(output, producers, data_inputs)
    ends = [
        i
        for node in graph.node
        if node.op_type == "Concat" and node.output[0] in ancestry and len(node.input) > 1
        for i in node.input
        if _concat_length(node, shapes) == anchors
    ]
    candidates = {layer.name: layer for layer in layers}
    scales = {}
    for end in ends:
        layer = _nearest_layer(end, producers, candidates)
        if layer is not None:
            scales.setdefault(layer.shape[2:], []).append(end)
    if not scales:
        return []
    order = {n.output[0]: k for k, n in enumerate(graph.node) if n.output}
    consumers = {}
    for node in graph.node:
        for i in data_inputs(node):  # a Reshape's target shape read off another scale's map is no path
            consumers.setdefault(i, []).append(node)
    found = []
    for size in sorted(scales, key=lambda s: -s[0] * s[1]):
        group = scales[size]
        shared = set.intersection(*(ancestors(e, producers, data_inputs) for e in group))
        for name in sorted((n for n in shared if n in candidates), key=lambda n: -order.get(n, -1)):
            if any(c.op_type in _CONVS for c in consumers.get(name, [])) and _dominates(name, group, image, consumers):
                found.append(name)
                break
    return found if len(found) == len(scales) else []


def _concat_length(node, shapes: dict) -> int | None:
    """The length of a Concat's output on its axis, from the inputs' static shapes (None if unknown)."""
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    total = 0
    for name in node.input:
        shape = shapes.get(name)
        if shape is None or not -len(shape) <= axis < len(shape) or not isinstance(shape[axis], int):
            return None
        total += shape[axis]
    return total


def _nearest_layer(name, producers, candidates):
    """The first candidate layer met walking back from `name` (breadth first, through data inputs)."""
    seen, queue = set(), [name]
    while queue:
        n = queue.pop(0)
        if n in seen:
            continue
        seen.add(n)
        if n in candidates:
            return candidates[n]
        if n in producers:
            queue.extend(data_inputs(producers[n]))
    return None


def _dominates(name, ends, image: str, consumers: dict) -> bool:
    """Whether every path from the image input to `ends` passes through `name`."""
    seen, stack = {name}, [image]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        if n in ends:
            return False
        seen.add(n)
        stack.extend(o for node in consumers.get(n, []) for o in node.output)
    return True
