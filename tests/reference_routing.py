"""The rules followed by hand, with each expert loaded the ordinary way: what the
engine and the Ray peer are checked against."""

import torch
from safetensors.torch import load_file


def reference(model, request):
    """(path of experts, [(label, detail), ...]) for one request."""
    path, steps = [], []
    frontier = list(model.router.first(request.fields))
    while frontier:
        name = frontier.pop(0)
        spec = model.experts[name]
        arch = model.architectures[spec.architecture]
        module = arch.build()
        module.load_state_dict(load_file(spec.weights_path))
        with torch.inference_mode():
            out = module.decode(module(request.input[None]))[0]
        label = arch.labels[out.label_index]
        path.append(name)
        steps.append((label, out.detail))
        frontier.extend(model.router.next(name, label, request.fields))
    return path, steps
