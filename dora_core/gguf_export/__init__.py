"""The merged model as GGUF, for llama.cpp and Ollama: `model.gguf` plus an Ollama `Modelfile`.

    write_gguf(folder, merged_model, tokenizer, file_type="f16")   # folder/model.gguf, folder/Modelfile

Written with gguf-py's GGUFWriter (the library llama.cpp's own converter uses) and its tensor-name
maps; what we add is the part llama.cpp's `convert_hf_to_gguf.py` does from a checkpoint folder,
done here from the model and tokenizer in memory: names, rotary layout and types of the tensors
(`tensors.py`), the architecture's hyper-parameters (`hparams.py`), the vocabulary
(`vocab.py`) and the Modelfile (`modelfile.py`). Which architectures: `dora_contract.architectures`.

`gguf_export_problem` answers, before a run trains, whether its model could be exported: a run
that asks for the gguf output on a model it cannot write is refused at the start, not after hours.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from torch import nn

from dora_contract.architectures import GGUF_ARCHITECTURES, gguf_unsupported_reason
from dora_core.gguf_export.hparams import add_hparams, hparams_problem
from dora_core.gguf_export.modelfile import modelfile_text
from dora_core.gguf_export.tensors import FILE_TYPES, GgufExportError, plan_tensors
from dora_core.gguf_export.vocab import add_vocab, build_vocab, vocab_problem

GGUF_FILE = "model.gguf"
MODELFILE = "Modelfile"

__all__ = ["FILE_TYPES", "GGUF_FILE", "MODELFILE", "GgufExportError", "gguf_export_problem", "write_gguf"]


def gguf_export_problem(config, tokenizer) -> str | None:
    """None when a model with this config and tokenizer can be written as GGUF, else why not."""
    return (gguf_unsupported_reason(getattr(config, "model_type", None))
            or hparams_problem(config) or vocab_problem(tokenizer))


def write_gguf(folder: str | Path, model: nn.Module, tokenizer, *, file_type: str = "f16",
               name: str | None = None) -> Path:
    """Write folder/model.gguf and folder/Modelfile from a plain (merged) transformers model.

    file_type: "f16" | "bf16" | "q8_0" (the 2-D weights; 1-D tensors stay f32). name: the file's
    general.name (default: the config's name_or_path, when it has one). Returns the GGUF path.
    """
    config = model.config
    problem = gguf_export_problem(config, tokenizer)
    if problem:
        raise GgufExportError(problem)
    if file_type not in FILE_TYPES:
        raise GgufExportError(f"file_type must be one of {sorted(FILE_TYPES)}, not {file_type!r}")
    file_enum, weight_type = FILE_TYPES[file_type]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / GGUF_FILE
    plans = plan_tensors(model, weight_type)
    vocab = build_vocab(tokenizer, config.vocab_size)

    writer = gguf.GGUFWriter(path, GGUF_ARCHITECTURES[config.model_type])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        title = name or Path(str(getattr(config, "name_or_path", "") or "")).name
        if title:
            writer.add_name(title)
        writer.add_file_type(file_enum)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_hparams(writer, config)
        add_vocab(writer, vocab)
        for plan in plans:
            writer.add_tensor_info(plan.name, plan.byte_shape, np.dtype(np.uint8), plan.nbytes,
                                   raw_dtype=plan.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for plan in plans:  # one converted tensor in memory at a time
            writer.write_tensor_data(plan.data())
    finally:
        writer.close()

    generation = getattr(model, "generation_config", None)
    eos_ids = getattr(generation, "eos_token_id", None) if generation is not None else config.eos_token_id
    (folder / MODELFILE).write_text(modelfile_text(tokenizer, eos_token_ids=eos_ids, gguf_name=GGUF_FILE))
    return path
