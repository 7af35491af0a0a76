"""Build the small .mar archives the engine and workflow tests serve: handlers from
tests/fixtures/handlers, and tiny eager / TorchScript models made on the spot. Archives are
built with the real model-archiver, as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

HANDLERS = Path(__file__).parent / "fixtures" / "handlers"

TINY_MODEL = textwrap.dedent('''
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        """Three inputs -> two classes."""

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x)
''')

TINY_HANDLER = textwrap.dedent('''
    import json

    import torch
    from ts.torch_handler.base_handler import BaseHandler


    class TinyHandler(BaseHandler):
        """Input: a JSON list of three numbers. Output: the winning class label."""

        def preprocess(self, data):
            rows = [row.get("body") for row in data]
            rows = [json.loads(r) if isinstance(r, (bytes, bytearray, str)) else r for r in rows]
            return torch.tensor(rows, dtype=torch.float32)

        def postprocess(self, output):
            idx = output.argmax(dim=1).tolist()
            return [self.mapping[str(i)] if self.mapping else i for i in idx]
''')


def archive(name: str, handler: str | Path, export: Path, *, version: str = "1.0",
            extra: list[Path] | None = None, model_file: Path | None = None,
            serialized: Path | None = None, config_file: Path | None = None) -> Path:
    cmd = [sys.executable, "-m", "dagserve.archiver.model_cli", "--model-name", name, "--version", version,
           "--handler", str(handler), "--export-path", str(export), "-f"]
    if extra:
        cmd += ["--extra-files", ",".join(str(e) for e in extra)]
    if model_file:
        cmd += ["--model-file", str(model_file)]
    if serialized:
        cmd += ["--serialized-file", str(serialized)]
    if config_file:
        cmd += ["--config-file", str(config_file)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return export / f"{name}.mar"


def handler_archive(name: str, handler_file: str, export: Path, **kw) -> Path:
    return archive(name, HANDLERS / handler_file, export, **kw)


def tiny_models(export: Path, work: Path) -> dict[str, Path]:
    """An eager model (model file + state dict) and a TorchScript one, same weights."""
    import torch

    work.mkdir(parents=True, exist_ok=True)
    (work / "tiny_model.py").write_text(TINY_MODEL)
    (work / "tiny_handler.py").write_text(TINY_HANDLER)
    (work / "index_to_name.json").write_text(json.dumps({"0": "left", "1": "right"}))
    namespace: dict = {}
    exec(compile(TINY_MODEL, "tiny_model", "exec"), namespace)
    model = namespace["TinyNet"]()
    with torch.no_grad():  # class 1 wins when x[0] > x[1], class 0 otherwise
        model.fc.weight.copy_(torch.tensor([[-1.0, 1.0, 0.0], [1.0, -1.0, 0.0]]))
        model.fc.bias.zero_()
    torch.save(model.state_dict(), work / "tiny.pt")
    torch.jit.trace(model, torch.zeros(1, 3)).save(str(work / "tiny_ts.pt"))
    eager = archive("tiny_eager", work / "tiny_handler.py", export,
                    model_file=work / "tiny_model.py", serialized=work / "tiny.pt",
                    extra=[work / "index_to_name.json"])
    scripted = archive("tiny_ts", work / "tiny_handler.py", export,
                       serialized=work / "tiny_ts.pt", extra=[work / "index_to_name.json"])
    return {"eager": eager, "torchscript": scripted}
