"""Triton Python-backend model of a seqexport step model; copied into a repository as `model.py`.

Triton's Python backend has no implicit state (only its ONNX Runtime, TensorRT and
PyTorch backends do), so this model keeps each sequence's state itself, keyed by
the sequence's correlation id, while Triton's sequence batcher routes the requests
and fills the four control inputs (`config.pbtxt`, `sequence_batching`):

- `START` (1 on a sequence's first request): the state is created, zeros (an export with
  static inputs: the `initial_state` model run on that request's static inputs), replacing
  any state left under that id;
- `END` (1 on its last request): the state is dropped after that request;
- `READY` (0 on the padding requests the `direct` strategy may add): nothing runs,
  no state changes;
- `CORRID` (uint64): the correlation id, the key of the state.

A sequence idle for longer than `idle_seconds` (the config's
`max_sequence_idle_microseconds`, after which Triton frees its slot too) has its
state dropped, and at most `max_sequences` states are kept: past that the least
recently used one is dropped (logged). A request of a sequence whose state was
dropped, or that never started, gets an error naming the id, never a result
computed from another state.

A request holds one chunk of one sequence: `inputs [1, T, F]`; the response holds
`outputs [1, T, O]` (an export with several outputs: each by its own name, `[1, T, ...]`,
every step of a last-step output too, as `stream` returns it) and every state after the
chunk (`[1, *state shape]`). An export with static inputs takes each, `[1, *shape]`, in
every request too, fed to every step. Each
step runs the exported step model (ONNX, weights frozen) in ONNX Runtime.

An export with a `generate` signature takes the optional input `max_new_tokens` (`[1, 1]` int32): a
request carrying N > 0 runs its chunk (the prompt), then N more steps, each fed the argmax id of the
last step's output (features: the output itself), as the export's greedy `generate` does, and returns
them as `tokens` `[1, N]` (`predictions`); the sequence keeps the state after them and goes on.

A whole-sequence export (its config's settings name a `whole_sequence_model`) has no state:
each request is whole sequences, every input of its `serving_default` by name (`inputs [B, T, F]`,
`lengths [B]` of a masked export), run once through that ONNX model; no control inputs.

Only numpy, onnxruntime and Triton's `triton_python_backend_utils` are imported:
the file runs inside Triton's Python stub, not in seqexport.

Tensors cross into and out of Triton through DLPack, never `as_numpy()` /
`pb_utils.Tensor(name, array)`: a stub built with an older pybind11 reads numpy 2's
dtype descriptors at numpy 1's offsets (the `nvidia-pytriton` 0.7.0 stub returns
`[1, 1]` for an input `[1, 2]`, and zero-byte outputs).
"""

import ctypes
import json
import os
import threading
import time
from collections import OrderedDict

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

PARAMETER = "seqexport"  # the config parameter holding this model's settings (JSON)


# The stub takes ownership of a DLPack capsule (it calls the tensor's deleter when done) but
# renames it "used_dlpack", not the standard "used_dltensor": numpy's capsule destructor then
# prints an error for every output. The capsule handed over has no destructor.
_set_destructor = ctypes.pythonapi.PyCapsule_SetDestructor
_set_destructor.argtypes = [ctypes.py_object, ctypes.c_void_p]
_set_destructor.restype = ctypes.c_int


def _to_triton(name, array):
    array = np.ascontiguousarray(array)
    if array.size == 0:  # numpy gives an empty array zero strides, which the stub refuses as "not contiguous"
        strides = [array.itemsize * int(np.prod(array.shape[i + 1:])) for i in range(array.ndim)]
        array = np.lib.stride_tricks.as_strided(array, strides=strides)
    capsule = array.__dlpack__()
    _set_destructor(capsule, None)
    return pb_utils.Tensor.from_dlpack(name, capsule)


def _from_triton(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else np.from_dlpack(tensor)


class SequenceError(Exception):
    """A request that names no live sequence."""


def _error_response(exc):
    """The client gets the reason; the server keeps serving."""
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}"))


class WholeSequence:
    """A whole-sequence export's `serving_default`: one run per request, nothing kept between them."""

    def __init__(self, session, spec):
        self.session = session
        self.inputs = list(spec["inputs"])
        self.outputs = list(spec["outputs"])

    def respond(self, request):
        feed = {}
        for name in self.inputs:
            value = _from_triton(request, name)
            if value is None:
                raise SequenceError(f"the request has no input {name!r}: send {self.inputs}")
            feed[name] = np.array(value)  # a copy: the request's memory is Triton's
        values = self.session.run(self.outputs, feed)
        return pb_utils.InferenceResponse(output_tensors=[_to_triton(n, v) for n, v in zip(self.outputs, values)])


class TritonPythonModel:
    """One step model, one state per live sequence (or, whole-sequence, one model run per request)."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        spec = json.loads(config["parameters"][PARAMETER]["string_value"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(spec.get("threads", 1))
        options.inter_op_num_threads = 1
        self.whole = None
        if spec.get("whole_sequence_model"):
            self.whole = WholeSequence(ort.InferenceSession(os.path.join(folder, spec["whole_sequence_model"]),
                                                            options, providers=["CPUExecutionProvider"]), spec)
            return
        self.session = ort.InferenceSession(os.path.join(folder, spec["step_model"]), options,
                                            providers=["CPUExecutionProvider"])
        self.input = spec["input"]  # the ONNX step model's per-step input
        # (name in the response, name in the step model, per-step shape, dtype) of each output
        self.outputs = [(o["name"], o["step_output"], tuple(o["shape"]), np.dtype(o["dtype"])) for o in spec["outputs"]]
        self.states = [(s["name"], tuple(s["shape"]), np.dtype(s["dtype"])) for s in spec["states"]]
        # Static inputs (no time axis): an input of every request, fed to every step; a sequence's
        # state starts from the `initial_state` model run on the START request's values.
        self.statics = list(spec.get("statics") or [])
        # Context inputs (an encoder's, with a time axis of their own): in the START request only, encoded
        # there by the `initial_state` model into the sequence's first states.
        self.contexts = list(spec.get("contexts") or [])
        self.initial = None
        if spec.get("initial_model"):
            self.initial = ort.InferenceSession(os.path.join(folder, spec["initial_model"]), options,
                                                providers=["CPUExecutionProvider"])
            self.initial_batch = spec["initial_batch_input"]
            self.initial_outputs = spec["initial_outputs"]  # [onnx name, state name] each
        self.extra = {}
        names = {i.name for i in self.session.get_inputs()}
        if spec.get("correlation_id_input") in names:  # an unused CORRID input of the step model
            self.extra[spec["correlation_id_input"]] = np.zeros((1, 1), np.uint64)
        self.generate = spec.get("generate")  # None, or what a `max_new_tokens` request feeds back
        self.fetch = ([step for _, step, _, _ in self.outputs]
                      + [name + spec["state_output_suffix"] for name, _, _ in self.states])
        self.idle_seconds = float(spec["idle_seconds"])
        self.max_sequences = int(spec["max_sequences"])
        self.controls = spec["controls"]  # {"start": name, "end": ..., "ready": ..., "corrid": ...}
        self.live = OrderedDict()  # correlation id -> (states, last request time), oldest first
        self.lock = threading.Lock()
        self.logger = pb_utils.Logger

    def _flag(self, request, key):
        value = _from_triton(request, self.controls[key])
        return None if value is None else int(value.reshape(-1)[0])

    def _correlation_id(self, request):
        value = _from_triton(request, self.controls["corrid"])
        return request.correlation_id() if value is None else int(value.reshape(-1)[0])

    def _sweep(self, now):
        for key in [k for k, (_, seen) in self.live.items() if now - seen > self.idle_seconds]:
            del self.live[key]
            self.logger.log_info(f"seqexport: dropped the state of sequence {key} after "
                                 f"{self.idle_seconds:g} s idle")

    @staticmethod
    def _values(request, names, missing):
        """Each of `names` from the request (a copy: the request's memory is Triton's); `missing(name)`: the
        error when one is absent."""
        values = {}
        for name in names:
            value = _from_triton(request, name)
            if value is None:
                raise SequenceError(missing(name))
            values[name] = np.array(value)
        return values

    def _static_values(self, request):
        return self._values(request, self.statics, lambda name: (
            f"the request has no static input {name!r}: send {self.statics} with every request of a sequence"))

    def _context_values(self, request):
        return self._values(request, self.contexts, lambda name: (
            f"the START request has no context input {name!r}: send {self.contexts} with the first request of a "
            "sequence (the encoder runs once, there)"))

    def _start_states(self, statics, request):
        if self.initial is None:
            return {name: np.zeros((1, *shape), dtype) for name, shape, dtype in self.states}
        feed = {self.initial_batch["name"]: np.array(1, np.dtype(self.initial_batch["dtype"])), **statics,
                **self._context_values(request)}
        values = self.initial.run([o for o, _ in self.initial_outputs], feed)
        return {state: value for (_, state), value in zip(self.initial_outputs, values)}

    def _states_for(self, key, start, now, statics, request):
        if start:
            self.live.pop(key, None)
            while len(self.live) >= self.max_sequences:
                dropped, _ = self.live.popitem(last=False)
                self.logger.log_warn(f"seqexport: dropped the state of sequence {dropped}: "
                                     f"more than {self.max_sequences} live sequences")
            return self._start_states(statics, request)
        if key not in self.live:
            raise SequenceError(f"sequence {key} has no state: its first request had no START flag, or its state was "
                           f"dropped (idle for over {self.idle_seconds:g} s, or more than {self.max_sequences} "
                           "live sequences); start it again with sequence_start")
        return self.live[key][0]

    def _empty(self):
        return {name: np.zeros((1, 0, *shape), dtype) for name, _, shape, dtype in self.outputs}

    def _run(self, chunk, states, statics):
        steps = [[] for _ in self.outputs]
        count = len(self.outputs)
        for t in range(chunk.shape[1]):
            results = self.session.run(self.fetch, {self.input: chunk[:, t], **statics, **states, **self.extra})
            for kept, value in zip(steps, results[:count]):
                kept.append(value)
            states = {name: value for (name, _, _), value in zip(self.states, results[count:])}
        if chunk.shape[1] == 0:
            return self._empty(), states
        return {name: np.stack(kept, axis=1) for (name, _, _, _), kept in zip(self.outputs, steps)}, states

    def _generated(self, request, chunk, outputs, states, statics):
        """`{tokens: [1, N]}` (or `predictions`) and the states after them: the request's `max_new_tokens`
        greedy steps, each fed what the last one chose ({} and the same states without a generate export)."""
        if self.generate is None:
            return {}, states
        value = _from_triton(request, self.generate["input"])
        count = 0 if value is None else int(np.array(value).reshape(-1)[0])
        bound = int(self.generate["max_new_tokens"])
        if not 0 <= count <= bound:
            raise SequenceError(f"{self.generate['input']} is {count}; the export generates 0 to {bound} new steps")
        ids = self.generate["feedback"] == "ids"
        if count and chunk.shape[1] == 0:
            raise SequenceError(f"{self.generate['input']} needs a chunk of at least one step (the prompt) to "
                                "choose the first new step from")
        last = outputs[self.generate["from_output"]][:, -1] if count else None
        chosen = []
        for _ in range(count):
            following = np.argmax(last, axis=-1) if ids else last
            following = following.astype(chunk.dtype)
            chosen.append(following)
            step_outputs, states = self._run(following[:, None], states, statics)
            last = step_outputs[self.generate["from_output"]][:, -1]
        if chosen:
            return {self.generate["output"]: np.stack(chosen, axis=1)}, states
        shape = () if ids else outputs[self.generate["from_output"]].shape[2:]
        return {self.generate["output"]: np.zeros((1, 0, *shape), chunk.dtype)}, states

    def _response(self, outputs, states, extra=None):
        tensors = [_to_triton(name, outputs[name]) for name, _, _, _ in self.outputs]
        tensors += [_to_triton(name, states[name]) for name, _, _ in self.states]
        tensors += [_to_triton(name, value) for name, value in (extra or {}).items()]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests):
        if self.whole is not None:
            responses = []
            for request in requests:
                try:
                    responses.append(self.whole.respond(request))
                except Exception as exc:  # noqa: BLE001  the client gets the reason, the server keeps serving
                    responses.append(_error_response(exc))
            return responses
        responses = []
        with self.lock:
            now = time.monotonic()
            self._sweep(now)
            for request in requests:
                try:
                    if self._flag(request, "ready") == 0:  # a padding slot of the direct strategy
                        zeros = {name: np.zeros((1, *shape), dtype) for name, shape, dtype in self.states}
                        responses.append(self._response(self._empty(), zeros))
                        continue
                    key = self._correlation_id(request)
                    statics = self._static_values(request)
                    states = self._states_for(key, self._flag(request, "start") == 1, now, statics, request)
                    chunk = np.array(_from_triton(request, "inputs"))  # a copy: the request's memory is Triton's
                    outputs, states = self._run(chunk, states, statics)
                    generated, states = self._generated(request, chunk, outputs, states, statics)
                    if self._flag(request, "end") == 1:
                        self.live.pop(key, None)
                    else:
                        self.live[key] = (states, now)
                        self.live.move_to_end(key)
                    responses.append(self._response(outputs, states, generated))
                except Exception as exc:  # noqa: BLE001  the client gets the reason, the server keeps serving
                    responses.append(_error_response(exc))
        return responses

    def finalize(self):
        if self.whole is None:
            self.live.clear()
