"""Every node's methods fit the way ComfyUI calls them (by input name), checked for the whole pack."""

import inspect

import pytest

from nodes import NODE_CLASS_MAPPINGS


def _inputs(cls) -> dict:
    spec = cls.INPUT_TYPES()
    return {**spec.get("required", {}), **spec.get("optional", {})}


@pytest.mark.parametrize("name", sorted(NODE_CLASS_MAPPINGS))
def test_function_takes_every_input_by_name(name, folders):
    # ComfyUI calls FUNCTION(**inputs): a required input the method does not name fails every run,
    # and an optional one it lacks fails as soon as a user connects it.
    cls = NODE_CLASS_MAPPINGS[name]
    parameters = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):  # **widgets takes any name
        assert set(_inputs(cls)) <= set(parameters), set(_inputs(cls)) - set(parameters)
    optional = set(cls.INPUT_TYPES().get("optional", {})) & set(parameters)
    assert all(parameters[n].default is not inspect.Parameter.empty for n in optional)


@pytest.mark.parametrize("name", sorted(n for n, c in NODE_CLASS_MAPPINGS.items() if hasattr(c, "VALIDATE_INPUTS")))
def test_validate_inputs_names_real_inputs_and_accepts_the_defaults(name, folders):
    # ComfyUI passes VALIDATE_INPUTS only the inputs its signature names (linked ones not at all), so
    # a misspelt name is never filled in, and the widgets' own defaults must pass.
    cls = NODE_CLASS_MAPPINGS[name]
    inputs = _inputs(cls)
    parameters = [p for p in inspect.signature(cls.VALIDATE_INPUTS).parameters if p != "input_types"]
    assert set(parameters) <= set(inputs), set(parameters) - set(inputs)
    defaults = {p: inputs[p][1]["default"] for p in parameters if len(inputs[p]) > 1 and "default" in inputs[p][1]}
    defaults.update({p: inputs[p][0][0] for p in parameters if isinstance(inputs[p][0], list) and inputs[p][0]})
    if len(defaults) == len(parameters):  # file combos are empty here: those need a file, tested per loader
        assert cls.VALIDATE_INPUTS(**defaults) is True
