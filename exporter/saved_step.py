"""A SavedModel that already has an explicit-state `step` signature, as a `StepModel`.

Keras 3 cannot rebuild layers from a SavedModel, so a SavedModel is usable as a
source only when it carries the step function itself (e.g. a seqexport export,
re-exported under another name or with other options). Several outputs, static
inputs and other sequence inputs come back from the manifest's `outputs`,
`static_inputs` and `sequence_inputs`.
"""

from __future__ import annotations

import json
from pathlib import Path

import tensorflow as tf

from exporter.artifact.errors import BadInput
from exporter.artifact.paths import SAVED_MODEL_FILE, is_saved_model_dir, manifest_path
from exporter.artifact.specs import InputSpec, OutputSpec, StateSpec
from exporter.step_model import StepModel


def _manifest(path: Path) -> dict:
    """The seqexport manifest of the SavedModel, or {} when it has none."""
    try:
        return json.loads(manifest_path(path).read_text())
    except (OSError, ValueError):
        return {}


def _state_order(path: Path, names: set[str]) -> list[str]:
    """The manifest's state order when the SavedModel is a seqexport export, else sorted names."""
    listed = [s.get("name") for s in _manifest(path).get("states", [])]
    return listed if set(listed) == names else sorted(names)


def step_model_from_saved_model(path: Path) -> StepModel:
    if not is_saved_model_dir(path):
        raise BadInput(
            f"{str(path)!r} is a directory without {SAVED_MODEL_FILE}, so it is not a SavedModel."
        )
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise BadInput(f"Could not load SavedModel {str(path)!r}: {str(exc).splitlines()[0]}") from None
    step = loaded.signatures.get("step")
    if step is None:
        raise BadInput(
            f"SavedModel {str(path)!r} has no 'step' signature (it has {sorted(loaded.signatures)}). "
            "seqexport rebuilds a model from its layers, which a SavedModel does not keep: export "
            "from the .keras file (model.save('model.keras')) or a step-model factory instead."
        )
    inputs = step.structured_input_signature[1]
    outputs = step.structured_outputs
    manifest = _manifest(path)
    several = tuple(OutputSpec.from_json(o) for o in manifest.get("outputs", []))
    statics = tuple(InputSpec.from_json(i) for i in manifest.get("static_inputs", []))
    sequences = tuple(InputSpec.from_json(i) for i in manifest.get("sequence_inputs", []))
    contexts = tuple(InputSpec.from_json(i) for i in manifest.get("context_inputs", []))
    output_keys = [o.name for o in several] or ["y"]
    static_names = [i.name for i in statics]
    sequence_names = [i.name for i in sequences]
    extra_names = [*static_names, *sequence_names]  # the order the step sees them in
    if "x" not in inputs or any(k not in outputs for k in output_keys) or any(k not in inputs for k in extra_names):
        raise BadInput(
            f"The 'step' signature of {str(path)!r} must take 'x'{''.join(f', {k!r}' for k in extra_names)} and "
            f"return {', '.join(repr(k) for k in output_keys)} (it takes {sorted(inputs)}, returns {sorted(outputs)})."
        )
    state_names = _state_order(path, set(inputs) - {"x", *extra_names})
    missing = [n for n in state_names if n not in outputs]
    if missing:
        raise BadInput(f"The 'step' signature of {str(path)!r} does not return states {missing}.")
    states = tuple(
        StateSpec(
            name=name,
            layer="step",
            index=i,
            shape=tuple(int(d) for d in inputs[name].shape[1:]),
            dtype=inputs[name].dtype.name,
        )
        for i, name in enumerate(state_names)
    )

    def outputs_of(result):
        if several:
            return tuple(result[o.name] for o in several)
        return result["y"]

    def step_fn(x, prev, extra_values=(), _keep_alive=loaded):
        # `extra_values`: the static values, then this step's slice of each other sequence input.
        result = step(x=x, **dict(zip(state_names, prev)), **dict(zip(extra_names, extra_values)))
        return outputs_of(result), tuple(result[n] for n in state_names)

    initial_states_fn = None
    initial = loaded.signatures.get("initial_state")
    initial_names = [*static_names, *(i.name for i in contexts)]  # an encoder's inputs: `initial_state` only
    if initial_names and initial is not None:
        def initial_states_fn(values, _keep_alive=loaded):
            batch = tf.shape(values[0])[0]
            result = initial(batch_size=batch, **dict(zip(initial_names, values)))
            return tuple(result[n] for n in state_names)

    trainable = tuple(getattr(loaded, "trainable_variables", ()))
    predict = loaded.signatures.get("serving_default")
    reference = None
    reference_names = [*initial_names, *sequence_names]  # `StepModel.extra_inputs` order
    if predict is not None and set(predict.structured_input_signature[1]) == {"inputs", *reference_names}:
        def reference(inputs, lengths=None, extra_values=()):
            # `extra_values`: the static values, the contexts, then each other sequence input whole.
            result = predict(inputs=inputs, **dict(zip(reference_names, extra_values)))
            return {o.name: result[o.name] for o in several} if several else result["outputs"]

    first = outputs[output_keys[0]]
    return StepModel(
        step_fn=step_fn,
        input_shape=tuple(int(d) for d in inputs["x"].shape[1:]),
        input_dtype=inputs["x"].dtype.name,
        output_shape=tuple(int(d) for d in first.shape[1:]),
        output_dtype=first.dtype.name,
        states=states,
        variables=tuple(getattr(loaded, "variables", ())),
        trainable_variables=trainable,
        reference_fn=reference,
        last_step_only=bool(manifest.get("last_step_only", False)) and not several,
        description=f"SavedModel {path.name}",
        outputs=several,
        static_inputs=statics,
        sequence_inputs=sequences,
        context_inputs=contexts,
        initial_states_fn=initial_states_fn,
    )
