"""Turn a path (or an in-memory model) into a Keras model plus its compile config.

This module owns everything about model files: which formats are read, Keras's
safe mode, legacy ``.h5`` training configs and user files of custom objects.
Models are always rebuilt with ``compile=False``: gradviz reads the losses and
weights from the file itself, so no optimizer is built and an unrestorable
compile config (a Keras 2 ``.h5``) does not stop the analysis.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from gradviz.errors import ModelLoadError, UnsafeModelError
if TYPE_CHECKING:
    import keras

KERAS_SUFFIXES = (".keras",)
H5_SUFFIXES = (".h5", ".hdf5")
#: config.json of the largest real models is a few MB; more is not a model config.
MAX_CONFIG_BYTES = 256 * 2**20


@dataclass(frozen=True)
class LoadedModel:
    """A rebuilt model and the losses it was compiled with.

    Attributes:
        model: the Keras model, never compiled by gradviz.
        loss: the ``loss`` argument of the saved compile config (serialized
            form for files, the live objects for in-memory models), or None.
        loss_weights: the ``loss_weights`` argument, or None.
        source: the file the model came from, or None for an in-memory model.
        custom_objects: names resolved from ``--custom-objects``.
        loss_scale: the factor Keras's training step scales the loss by before
            differentiating (mixed precision, :func:`keras_loss_scale`), or None.
    """

    model: keras.Model
    loss: Any = None
    loss_weights: Any = None
    source: str | None = None
    custom_objects: dict[str, Any] = field(default_factory=dict)
    loss_scale: float | None = None


def import_custom_objects(path: str | Path) -> dict[str, Any]:
    """Import a user's Python file and collect the classes and functions it defines.

    Importing the file also runs its ``@keras.saving.register_keras_serializable``
    decorators. A module-level ``CUSTOM_OBJECTS`` dict, when present, is used as is.
    As with ``python FILE.py``, the file's folder is on ``sys.path`` while it is
    imported (``from custom_objs import Scale`` finds ``custom_objs.py`` beside it),
    and classes and functions it imports from modules in that folder count as its own.

    Args:
        path: a ``.py`` file.

    Returns:
        A mapping of names to objects, to pass to Keras as ``custom_objects``.

    Raises:
        ModelLoadError: the file is missing or fails to import.
    """
    file = Path(path)
    if not file.is_file():
        raise ModelLoadError(f"custom objects file not found: {file} (expected a .py file)")
    if file.suffix != ".py":
        raise ModelLoadError(f"custom objects file must be a Python file (.py): {file}")
    module_name = f"gradviz_custom_objects_{abs(hash(str(file.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import custom objects file: {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        with _folder_on_path(file.resolve().parent):
            spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise ModelLoadError(
            f"custom objects file {file} failed to import: {type(e).__name__}: {e}"
        ) from e
    declared = getattr(module, "CUSTOM_OBJECTS", None)
    if isinstance(declared, dict):
        return dict(declared)
    folder = file.resolve().parent
    return {
        name: obj
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and (getattr(obj, "__module__", None) == module_name or _defined_in(obj, folder))
    }


@contextlib.contextmanager
def _folder_on_path(folder: Path) -> Iterator[None]:
    """Put ``folder`` first on ``sys.path`` for the block (as ``python FILE.py`` does for the file's folder)."""
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)


def _defined_in(obj: Any, folder: Path) -> bool:
    """Whether ``obj`` comes from a module whose file lies in ``folder`` (a custom objects file's sibling)."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    source = getattr(module, "__file__", None)
    return bool(source) and Path(str(source)).resolve().parent == folder


def registered_names(config: Any) -> dict[str, str]:
    """The names Keras looks up for the custom classes and functions of a serialized config.

    Keras saves a custom class as its class name plus the name it was registered
    under (``package>Name`` with ``@keras.saving.register_keras_serializable(package=...)``,
    ``Name`` alone without), and looks it up by the registered name only.
    Keras's own objects are left out.

    Args:
        config: a model or compile config (JSON).

    Returns:
        ``{registered name: class or function name}``.

    Example:
        >>> registered_names({"class_name": "Scale", "module": None, "registered_name": "my>Scale"})
        {'my>Scale': 'Scale'}
        >>> registered_names([{"class_name": "function", "config": "my>my_loss", "module": "builtins"},
        ...                   {"class_name": "Dense", "module": "keras.layers", "registered_name": None}])
        {'my>my_loss': 'my_loss'}
    """
    found: dict[str, str] = {}
    stack = [config]  # iterative: a hostile file may nest deeper than Python's recursion limit
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            class_name = node.get("class_name")
            module = str(node.get("module") or "")
            if not (module == "keras" or module.startswith("keras.")) and isinstance(class_name, str):
                registered = node.get("registered_name")
                inner = node.get("config")
                if class_name == "function" and isinstance(inner, str) and ">" in inner:
                    found.setdefault(inner, inner.split(">", 1)[1])
                elif class_name != "function" and isinstance(registered, str) and registered:
                    found.setdefault(registered, class_name)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def match_registered_names(custom_objects: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """Add the registered names a config uses (``my>Scale``) for the custom objects of the same class name.

    A file defining ``class Scale`` without (or with another) registration then
    resolves a model saved with ``@register_keras_serializable(package="my")``.

    Example:
        >>> class Scale: ...
        >>> sorted(match_registered_names({"Scale": Scale}, {"my>Scale": "Scale", "my>Other": "Other"}))
        ['Scale', 'my>Scale']
    """
    matched = dict(custom_objects)
    by_class = {getattr(obj, "__name__", name): obj for name, obj in custom_objects.items()}
    for registered, class_name in names.items():
        if registered not in matched:
            obj = custom_objects.get(class_name, by_class.get(class_name))
            if obj is not None:
                matched[registered] = obj
    return matched


def import_loss_terms(text: str) -> Any:
    """Import ``FILE.py:FUNCTION``: the function returning a custom training step's loss terms.

    The file is imported (its top-level code runs, as with ``--custom-objects``).

    Example:
        >>> import_loss_terms("terms.py")
        Traceback (most recent call last):
        ...
        gradviz.errors.LossSpecError: --loss-terms expects FILE.py:FUNCTION, got 'terms.py'

    Raises:
        LossSpecError: the text is not ``FILE.py:FUNCTION``, or the file has no such function.
        ModelLoadError: the file is missing or fails to import.
    """
    from gradviz.errors import LossSpecError

    path, sep, name = text.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise LossSpecError(f"--loss-terms expects FILE.py:FUNCTION, got {text!r}")
    file = Path(path)
    if not file.is_file():
        raise ModelLoadError(f"loss terms file not found: {file} (expected a .py file)")
    if file.suffix != ".py":
        raise ModelLoadError(f"loss terms file must be a Python file (.py): {file}")
    module_name = f"gradviz_loss_terms_{abs(hash(str(file.resolve())))}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, file)
        if spec is None or spec.loader is None:
            raise ModelLoadError(f"cannot import loss terms file: {file}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[module_name]
            raise ModelLoadError(f"loss terms file {file} failed to import: {type(e).__name__}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        functions = sorted(k for k, v in vars(module).items() if inspect.isfunction(v) and not k.startswith("_"))
        raise LossSpecError(
            f"--loss-terms: {file} defines no function {name!r}; functions there: {', '.join(functions) or 'none'}"
        )
    return fn


def from_model(model: Any) -> LoadedModel:
    """Wrap an in-memory Keras model, reading the losses it was compiled with.

    Raises:
        ModelLoadError: ``model`` is not a Keras model.
    """
    import keras

    if not isinstance(model, keras.Model):
        raise ModelLoadError(
            f"expected a keras.Model or a path to a .keras/.h5 file, got {type(model).__name__}"
        )
    config = getattr(getattr(model, "_compile_config", None), "config", None)
    compiled = getattr(model, "compiled", False)
    scale = keras_loss_scale(model, getattr(model, "optimizer", None) if compiled else None, compiled=compiled)
    if compiled and isinstance(config, dict):
        return LoadedModel(model, config.get("loss"), config.get("loss_weights"), loss_scale=scale)
    return LoadedModel(model, loss_scale=scale)


#: what ``LossScaleOptimizer`` starts from (``keras/src/optimizers/loss_scale_optimizer.py``)
DEFAULT_LOSS_SCALE = 2.0**15


def keras_loss_scale(model: Any, optimizer: Any, *, compiled: bool) -> float | None:
    """The factor Keras's training step multiplies the loss by before differentiating.

    ``compile()`` wraps the optimizer in a ``LossScaleOptimizer`` when the model's dtype
    policy is ``mixed_float16`` (unless ``auto_scale_loss=False``), which scales the loss
    by its dynamic scale (``2**15`` at first) and divides the gradients by it, so that
    small float16 gradients do not underflow. An optimizer's ``loss_scale_factor`` does the
    same with a fixed factor.

    Args:
        model: the model.
        optimizer: its optimizer: a live one, a serialized config (a file's compile
            config), or None.
        compiled: whether the model is a compiled in-memory model (its optimizer is then
            exactly what training uses, wrapped or not); a file or an uncompiled model is
            judged by what ``compile()`` would make of it.

    Returns:
        The scale, or None when training does not scale the loss.
    """
    import keras

    mixed = str(getattr(getattr(model, "dtype_policy", None), "name", "")) == "mixed_float16"
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        built = getattr(optimizer, "built", False)
        return float(optimizer.dynamic_scale.numpy()) if built else float(optimizer.initial_scale)
    if isinstance(optimizer, keras.optimizers.Optimizer):
        factor = getattr(optimizer, "loss_scale_factor", None)
        return float(factor) if factor else None  # compile() kept it unwrapped (auto_scale_loss=False)
    if isinstance(optimizer, dict):  # a saved config: compile() will wrap it again
        config: dict[str, Any] = optimizer["config"] if isinstance(optimizer.get("config"), dict) else {}
        if optimizer.get("class_name") == "LossScaleOptimizer":
            return float(config.get("initial_scale", DEFAULT_LOSS_SCALE))
        if config.get("loss_scale_factor"):
            return float(config["loss_scale_factor"])
    return DEFAULT_LOSS_SCALE if mixed and not compiled else None


def load_model(
    path: str | Path,
    *,
    custom_objects_file: str | Path | None = None,
    unsafe: bool = False,
) -> LoadedModel:
    """Load a ``.keras`` or legacy ``.h5`` model file without compiling it.

    Args:
        path: the model file.
        custom_objects_file: a Python file defining custom layers and losses.
        unsafe: allow Lambda layers, whose Python bytecode runs on load.

    Returns:
        The model with the ``loss`` and ``loss_weights`` it was saved with.

    Raises:
        ModelLoadError: the file is missing, not a model, corrupt, or names
            classes that cannot be resolved.
        UnsafeModelError: the file holds a Lambda layer and ``unsafe`` is off.
    """
    file = Path(path)
    _check_path(file)
    custom_objects = import_custom_objects(custom_objects_file) if custom_objects_file else {}
    if file.suffix in KERAS_SUFFIXES:
        model_config, compile_config = _read_keras_archive(file)
    else:
        model_config, compile_config = _read_h5(file)
    if not unsafe:
        lambdas = _lambda_layers(model_config)
        if lambdas:
            raise UnsafeModelError(
                f"{file} contains Lambda layer(s) {', '.join(lambdas)} whose Python code "
                "would run on load; pass `unsafe=True` only if you trust the file"
            )
    names = registered_names([model_config, compile_config])
    custom_objects = match_registered_names(custom_objects, names)
    model = _rebuild(file, custom_objects, unsafe, names, custom_objects_file)
    compile_config = compile_config or {}
    return LoadedModel(
        model,
        compile_config.get("loss"),
        compile_config.get("loss_weights"),
        str(file),
        custom_objects,
        keras_loss_scale(model, compile_config.get("optimizer"), compiled=False),
    )


def check_path(path: str | Path) -> None:
    """Fail fast (before TensorFlow is imported) when ``path`` cannot be a model file.

    Example:
        >>> check_path("no/such/model.keras")
        Traceback (most recent call last):
        ...
        gradviz.errors.ModelLoadError: no such file: no/such/model.keras (expected a .keras or .h5 model file)

    Raises:
        ModelLoadError: missing, a directory, empty, or not named .keras/.h5.
    """
    _check_path(Path(path))


def _check_path(file: Path) -> None:
    if file.is_dir():
        if (file / "saved_model.pb").exists():
            raise ModelLoadError(
                f"{file} is a TensorFlow SavedModel directory; gradviz reads .keras or .h5 "
                "files: rebuild the model in Keras 3 and save it with model.save('model.keras')"
            )
        raise ModelLoadError(f"{file} is a directory; expected a .keras or .h5 model file")
    if not file.exists():
        raise ModelLoadError(f"no such file: {file} (expected a .keras or .h5 model file)")
    if file.suffix not in KERAS_SUFFIXES + H5_SUFFIXES:
        raise ModelLoadError(
            f"{file} is not a Keras model file; expected a .keras or .h5 (.hdf5) file"
        )
    if file.stat().st_size == 0:
        raise ModelLoadError(f"{file} is empty; expected a Keras model file")


def _read_keras_archive(file: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Read config.json from a .keras zip archive."""
    if not zipfile.is_zipfile(file):
        if _starts_like_zip(file):  # a zip's first bytes but no central directory: cut short
            raise ModelLoadError(
                f"{file} is a damaged or truncated .keras archive (its zip directory is missing); "
                "copy or save the model again"
            )
        raise ModelLoadError(
            f"{file} is not a Keras archive (a .keras file is a zip holding config.json)"
        )
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
            if "config.json" not in names:
                raise ModelLoadError(f"{file} is a zip file but holds no config.json: not a .keras model")
            size = archive.getinfo("config.json").file_size
            if size > MAX_CONFIG_BYTES:  # a zip bomb would otherwise be inflated into memory
                raise ModelLoadError(
                    f"{file}: config.json would inflate to {size:,} bytes, more than a model "
                    f"config needs (limit {MAX_CONFIG_BYTES:,}); not a .keras file gradviz will read"
                )
            raw = archive.read("config.json")
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as e:
        raise ModelLoadError(f"{file} is a damaged .keras archive ({e})") from e
    config = _parse_json(raw, f"{file}: config.json")
    if not isinstance(config, dict):
        raise ModelLoadError(f"{file}: config.json must hold a JSON object describing the model")
    compile_config = config.get("compile_config")
    return config, compile_config if isinstance(compile_config, dict) else None


def _starts_like_zip(file: Path) -> bool:
    try:
        with open(file, "rb") as handle:
            return handle.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _read_h5(file: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Read the model and training configs stored as attributes of a legacy .h5 file."""
    import h5py

    try:
        with h5py.File(file, "r") as h5:
            attrs = dict(h5.attrs)
    except OSError as e:
        raise ModelLoadError(f"{file} is not a readable HDF5 file ({e})") from e
    if "model_config" not in attrs:
        raise ModelLoadError(
            f"{file} is an HDF5 file without a model_config: a weights-only file? "
            "gradviz needs a whole model saved with model.save()"
        )
    model_config = _parse_json(attrs["model_config"], f"{file}: model_config")
    training = attrs.get("training_config")
    training_config = _parse_json(training, f"{file}: training_config") if training is not None else None
    if not isinstance(model_config, dict):
        raise ModelLoadError(f"{file}: model_config must be a JSON object")
    return model_config, training_config if isinstance(training_config, dict) else None


def _parse_json(raw: Any, what: str) -> Any:
    """Parse JSON from an untrusted file: every failure is a ModelLoadError.

    Example:
        >>> _parse_json(b"[" * 100000, "config.json")
        Traceback (most recent call last):
        ...
        gradviz.errors.ModelLoadError: config.json is not valid JSON (nested too deeply)
    """
    try:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8")
        return json.loads(raw)
    except UnicodeDecodeError as e:
        raise ModelLoadError(f"{what} is not valid JSON (not UTF-8 text: {e.reason} at byte {e.start})") from e
    except RecursionError as e:  # json's parser recurses per nesting level
        raise ModelLoadError(f"{what} is not valid JSON (nested too deeply)") from e
    except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise ModelLoadError(f"{what} is not valid JSON ({e})") from e


def _lambda_layers(config: Any) -> list[str]:
    """Names of Lambda layers anywhere in a serialized model config."""
    found: list[str] = []
    stack = [config]  # iterative: a hostile file may nest deeper than Python's recursion limit
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                inner = node.get("config")
                name = inner.get("name") if isinstance(inner, dict) else None
                found.append(str(name or "<unnamed>"))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return sorted(set(found))


# Keras's words for a name it cannot resolve: "Could not locate class 'X'" (.keras),
# "Unknown layer: 'X'" (legacy .h5), "Could not interpret loss identifier: x" (a bare name).
_UNKNOWN_CLASS = re.compile(
    r"Could not locate (?:class|function) ['`\"]([\w.>< -]+)['`\"]"
    r"|Unknown [a-z ]+?: ['`\"]([\w.>< -]+)['`\"]"
    r"|Could not interpret [a-z ]*identifier: ([A-Za-z_][\w.>]*)(?:$|[ .])"
)


def _rebuild(file: Path, custom_objects: dict[str, Any], unsafe: bool, names: dict[str, str] | None = None,
             custom_objects_file: str | Path | None = None) -> keras.Model:
    import keras

    try:
        with _quiet_absl(), _unsafe_scope(unsafe), _random_streams_kept():
            model = keras.saving.load_model(
                file, compile=False, safe_mode=not unsafe, custom_objects=custom_objects or None
            )
    except Exception as e:  # Keras raises bare ValueError/TypeError/KeyError for bad files
        message = _explain_load_failure(file, e)
        unknown = _unknown_identifier(e, names or {})
        if unknown is not None:
            message = _unknown_identifier_message(file, *unknown, custom_objects, custom_objects_file)
        raise ModelLoadError(message) from e
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{file} holds a {type(model).__name__}, not a Keras model")
    return model


def _explain_load_failure(file: Path, error: Exception) -> str:
    """One line from Keras's nested load errors (each level repeats the whole config).

    Example:
        >>> _explain_load_failure(Path("m.h5"), ValueError("Unknown layer: 'FancyDense'. Please ensure ..."))
        "m.h5 uses an unknown class or function 'FancyDense'; pass `custom_objects=FILE.py` with a Python file that defines it"
    """
    text = " ".join(str(error).split())
    missing = _missing_module_hint(file, text)
    if missing:
        return missing
    match = _UNKNOWN_CLASS.search(text)
    name = next((group for group in match.groups() if group), None) if match else None
    if name in ("True", "False", "None"):  # a damaged value, not a class name
        name = None
    if name and _is_keras_builtin(name):
        return (
            f"{file} names Keras's own '{name}' in a form this Keras cannot resolve: config.json is "
            "damaged or was written by an incompatible Keras version; save the model again"
        )
    if name:
        return (
            f"{file} uses an unknown class or function '{name}'; pass `custom_objects=FILE.py` "
            "with a Python file that defines it"
        )
    if "lambda" in text.lower() and "safe_mode" in text:
        return f"{file} holds a Python lambda, whose code would run on load; pass `unsafe=True` only if you trust the file"
    # Keras wraps the cause in "... Exception encountered: <cause>" once per nesting level.
    cause = text.rsplit("Exception encountered:", 1)[-1].strip()
    first = cause[:300] + ("..." if len(cause) > 300 else "")
    return f"cannot rebuild the model from {file}: {type(error).__name__}: {first}"


def _unknown_identifier(error: Exception, names: dict[str, str]) -> tuple[str, str, str] | None:
    """``(identifier Keras looked up, name, "class" or "function")`` when ``error`` is about a custom
    name the config registers.

    Keras's message names the class (``Could not locate class 'Scale'``) but it looked
    up the registered name (``my>Scale``): only the config says which.
    """
    match = _UNKNOWN_CLASS.search(" ".join(str(error).split()))
    name = next((group for group in match.groups() if group), None) if match else None
    if not name:
        return None
    if name in names:  # a function: Keras names it by its registered name already
        return name, names[name], "function"
    candidates = sorted(registered for registered, class_name in names.items() if class_name == name)
    return (candidates[0], name, "class") if candidates else None


def _unknown_identifier_message(file: Path, identifier: str, name: str, kind: str, custom_objects: dict[str, Any],
                                custom_objects_file: str | Path | None) -> str:
    """One line naming what Keras looks for, and where it looked.

    Example:
        >>> _unknown_identifier_message(Path("m.keras"), "my>Scale", "Scale", "class", {}, None)
        "m.keras uses an unknown class or function 'my>Scale' (class Scale); pass `custom_objects=FILE.py` with a Python file that defines class Scale"
    """
    what = f"'{identifier}'" if identifier == name else f"'{identifier}' ({kind} {name})"
    if custom_objects_file is None:
        return (f"{file} uses an unknown class or function {what}; pass `custom_objects=FILE.py` with a Python "
                f"file that defines {kind} {name}")
    defined = sorted(key for key in custom_objects if ">" not in key)
    listing = f"it defines: {', '.join(defined)}" if defined else "it defines no class or function"
    return (f"{file} uses an unknown class or function {what}, which {custom_objects_file} neither defines nor "
            f"registers ({listing})")


# Keras's words for a class whose module does not import (.keras): "Could not deserialize class 'BertBackbone'
# because its parent module keras_hub.src.models.bert.bert_backbone cannot be imported."
_UNIMPORTABLE = re.compile(r"Could not deserialize class '([\w.>< -]+)' because its parent module ([\w.]+) cannot be imported")

#: pip's names for packages whose import name differs
PIP_NAMES = {
    "keras_hub": "keras-hub",
    "keras_nlp": "keras-nlp",
    "keras_cv": "keras-cv",
    "tensorflow_text": "tensorflow-text",
    "tf_keras": "tf-keras",
}


def _missing_module_hint(file: Path, text: str) -> str | None:
    """One line for a class whose module cannot be imported: which package to install, or --custom-objects.

    Example:
        >>> _missing_module_hint(Path("m.keras"), "Could not deserialize class 'BertBackbone' because its parent "
        ...                      "module keras_nlp_missing.models cannot be imported. Full object config: ...")
        "m.keras uses class 'BertBackbone' from keras_nlp_missing.models, but the package keras_nlp_missing is not installed: pip install keras_nlp_missing; or, if 'BertBackbone' is your own class, pass `custom_objects=FILE.py` with a Python file that defines it"
    """
    match = _UNIMPORTABLE.search(text)
    if match is None:
        return None
    name, module = match.group(1), match.group(2)
    top = module.split(".")[0]
    if top == "__main__":  # defined in the script that saved the model
        return (f"{file} uses class '{name}', defined in the script that saved the model; pass `custom_objects=FILE.py` "
                "with a Python file that defines it")
    try:
        installed = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        installed = False
    if not installed:
        where = f"{file} uses class '{name}' from {module}, but the package {top} is not installed"
        if top in PIP_NAMES:
            return f"{where}: pip install {PIP_NAMES[top]}"
        return (f"{where}: pip install {top}; or, if '{name}' is your own class, pass `custom_objects=FILE.py` "
                "with a Python file that defines it")
    # Installed, yet the module does not import: say why (Keras has imported it already, so this runs no new code).
    try:
        importlib.import_module(module)
    except ImportError as e:
        dependency = getattr(e, "name", None)
        if dependency and dependency.split(".")[0] != top:
            dep = dependency.split(".")[0]
            return (f"{file} uses class '{name}' from {module}, which cannot be imported because {top} needs {dep}, "
                    f"which is not installed: pip install {PIP_NAMES.get(dep, dep)}")
        return f"{file} uses class '{name}' from {module}, which cannot be imported: {type(e).__name__}: {e}"
    except Exception as e:  # the module itself fails while importing
        return f"{file} uses class '{name}' from {module}, which fails to import: {type(e).__name__}: {e}"
    return None


def _is_keras_builtin(name: str) -> bool:
    """Whether Keras itself defines ``name`` (so --custom-objects is not the fix)."""
    import keras

    modules = (keras.layers, keras.models, keras.losses, keras.initializers, keras.regularizers,
               keras.constraints, keras.activations, keras.optimizers)
    return name in ("Functional", "Sequential") or any(hasattr(module, name) for module in modules)


@contextlib.contextmanager
def _unsafe_scope(unsafe: bool) -> Iterator[None]:
    """Allow Lambda bytecode for this load only (legacy .h5 ignores ``safe_mode=``)."""
    if not unsafe:
        yield
        return
    from keras.src.saving import serialization_lib

    with serialization_lib.SafeModeScope(False):
        yield


@contextlib.contextmanager
def _random_streams_kept() -> Iterator[None]:
    """Give the caller's random streams back after Keras has rebuilt a model.

    Rebuilding layers draws initializer seeds from Python's ``random`` (Keras's
    ``make_default_seed``) and may create Keras's global SeedGenerator, so the
    caller's next ``random.random()`` or ``keras.random.normal(...)`` would differ
    from a run without gradviz. NumPy's global state is kept as well.
    """
    import random

    import numpy as np
    from keras.src.backend.common import (
        global_state,  # private: where the global SeedGenerator lives
    )
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR

    python_state = random.getstate()
    numpy_state = np.random.get_state()
    generator = global_state.get_global_attribute(GLOBAL_SEED_GENERATOR)
    generator_state = None if generator is None else np.array(generator.state.numpy())
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        global_state.set_global_attribute(GLOBAL_SEED_GENERATOR, generator)
        if generator is not None:
            generator.state.assign(generator_state)


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """Keras logs expected notices (skipped optimizer variables) through absl; hide them."""
    try:
        from absl import logging as absl_logging
    except ImportError:  # pragma: no cover - absl ships with TensorFlow
        yield
        return
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(level)
