"""A SavedModel that already has an explicit-state `step` signature, as a `StepModel`.

Keras 3 cannot rebuild layers from a SavedModel, so a SavedModel is usable as a
source only when it carries the step function itself (e.g. a seqexport export,
re-exported under another name or with other options).
"""

from __future__ import annotations

import json
from pathlib import Path

import tensorflow as tf

from exporter.artifact.errors import BadInput, refuse_static_inputs_or_several_outputs
from exporter.artifact.paths import SAVED_MODEL_FILE, is_saved_model_dir, manifest_path
from exporter.artifact.specs import StateSpec
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
    refuse_static_inputs_or_several_outputs(f"Exporting from the SavedModel {str(path)!r}",
                                            [i.get("name") for i in manifest.get("static_inputs", [])],
                                            [o.get("name") for o in manifest.get("outputs", [])],
                                            advice=" Export from the .keras file instead.",
                                            sequence_inputs=[i.get("name")
                                                             for i in manifest.get("sequence_inputs", [])])
    if "x" not in inputs or "y" not in outputs:
        raise BadInput(f"The 'step' signature of {str(path)!r} must take 'x' and return 'y'.")
    state_names = _state_order(path, set(inputs) - {"x"})
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

    def step_fn(x, prev, _keep_alive=loaded):
        result = step(x=x, **dict(zip(state_names, prev)))
        return result["y"], tuple(result[n] for n in state_names)

    trainable = tuple(getattr(loaded, "trainable_variables", ()))
    predict = loaded.signatures.get("serving_default")
    reference = None
    if predict is not None and set(predict.structured_input_signature[1]) == {"inputs"}:
        reference = lambda inputs, lengths=None: predict(inputs=inputs)["outputs"]  # noqa: E731
    return StepModel(
        step_fn=step_fn,
        input_shape=tuple(int(d) for d in inputs["x"].shape[1:]),
        input_dtype=inputs["x"].dtype.name,
        output_shape=tuple(int(d) for d in outputs["y"].shape[1:]),
        output_dtype=outputs["y"].dtype.name,
        states=states,
        variables=tuple(getattr(loaded, "variables", ())),
        trainable_variables=trainable,
        reference_fn=reference,
        last_step_only=bool(_manifest(path).get("last_step_only", False)),
        description=f"SavedModel {path.name}",
    )
