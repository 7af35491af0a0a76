"""Memory per worker, with and without the fork server, and start-up to first inference.

``python -m benchmarks.memory`` starts dagserve twice (``worker_fork_server=true`` and
``false``), each time with the echo model alone (the whole server's memory is read once it
settles: the goal of issue 16 is its PSS within 2x Triton's), then the example CNN at 1 then
3 workers and a 3-node echo workflow, then each example workflow that ``make examples``
built (``wf_store/*.war`` with the ``.mar`` files of ``model_store/``) in turn, and the
3-node echo workflow again without and with ``workflow: share-workers: true``, and reads every
process's RSS, PSS and USS (private pages) from ``/proc/<pid>/smaps_rollup``. PSS splits shared pages between the processes sharing them;
USS is what a process alone costs, i.e. what one more worker adds. Prints a Markdown table
and writes ``benchmarks/out/memory.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path

from .artifacts import build_artifacts, build_shared_model_wars, sample_image
from .procstats import process_tree
from .servers import Ports, ServerProcess, dagserve_command, free_ports, write_config

OUT = Path(__file__).resolve().parent / "out"
REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


@dataclass
class Memory:
    rss: float  # MiB
    pss: float
    uss: float


def smaps(pid: int) -> Memory | None:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    kb = {}
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            kb[key] = int(parts[0])
    uss = kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)
    return Memory(kb.get("Rss", 0) / 1024, kb.get("Pss", 0) / 1024, uss / 1024)


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def classify(server_pid: int) -> dict[str, list[tuple[int, Memory]]]:
    """The server's processes by role: frontend, fork server, workers."""
    roles: dict[str, list[tuple[int, Memory]]] = {"frontend": [], "fork server": [],
                                                  "workers": []}
    for pid in process_tree(server_pid):
        mem = smaps(pid)
        if mem is None:
            continue
        cmd = _cmd(pid)
        if pid == server_pid:
            roles["frontend"].append((pid, mem))
        elif _comm(pid) == "dagserve-worker" or "workers.main" in cmd:
            roles["workers"].append((pid, mem))
        elif "workers.zygote" in cmd:
            roles["fork server"].append((pid, mem))
    return roles


def _total(items: list[tuple[int, Memory]]) -> Memory:
    return Memory(sum(m.rss for _, m in items), sum(m.pss for _, m in items),
                  sum(m.uss for _, m in items))


def _tree_total(roles: dict[str, list[tuple[int, Memory]]]) -> Memory:
    """The whole server: every process of every role."""
    return _total([item for items in roles.values() for item in items])


def settled_tree(server_pid: int,
                 timeout_s: float = 20.0) -> dict[str, list[tuple[int, Memory]]]:
    """The server's processes by role once its PSS stops moving (two reads 0.5 s apart
    within 1 MiB: nothing is still importing in the background)."""
    deadline = time.perf_counter() + timeout_s
    roles = classify(server_pid)
    while time.perf_counter() < deadline:
        time.sleep(0.5)
        again = classify(server_pid)
        before, after = _tree_total(roles).pss, _tree_total(again).pss
        roles = again
        if abs(after - before) < 1.0:
            break
    return roles


def _by_role(roles: dict[str, list[tuple[int, Memory]]]) -> dict:
    return {role: asdict(_total(items)) for role, items in roles.items() if items}


def worker_pids(server: ServerProcess, model: str) -> list[int]:
    reply = server._manage("GET", f"/models/{urllib.parse.quote(model)}", "describe")
    return [w["pid"] for w in json.loads(reply.body)[0]["workers"]]


def example_wars(store: Path, models: Path = REPO / "model_store",
                 workflows: Path = REPO / "wf_store") -> list[str]:
    """The example workflows ``make examples`` built, copied into ``store`` with the models
    they name; [] when they were not built."""
    for mar in models.glob("*.mar"):
        if not (store / mar.name).exists():
            shutil.copy2(mar, store / mar.name)
    wars = sorted(workflows.glob("*.war"))
    for war in wars:
        shutil.copy2(war, store / war.name)
    return [war.name for war in wars]


def measure_examples(server: ServerProcess, wars: list[str]) -> list[dict]:
    """Register each example workflow in turn: the workers it adds and what the whole
    server's RSS and PSS grow by (the tree read once it settles)."""
    out = []
    for war in wars:
        before = settled_tree(server.pid)
        name = "ex_" + war[:-len(".war")]
        reply = server.register_workflow(war, name)
        if reply.status != 200:
            out.append({"workflow": war, "error": reply.message()[:200]})
            continue
        after = settled_tree(server.pid)
        now, then = _tree_total(after), _tree_total(before)
        grown = {k: getattr(now, k) - getattr(then, k) for k in ("rss", "pss", "uss")}
        nodes = json.loads(server._manage("GET", f"/workflows/{name}", "describe").body)[0]
        out.append({"workflow": war, "nodes": len(nodes["nodes"]),
                    "workers_added": len(after["workers"]) - len(before["workers"]),
                    **{f"{k}_added": round(v, 1) for k, v in grown.items()}})
    return out


def run_mode(fork_server: bool, work: Path) -> dict:
    art = build_artifacts(work / "artifacts")
    wars = example_wars(art.store)
    if art.cnn is None:
        raise SystemExit(f"the example CNN is needed: {art.cnn_skip_reason}")
    ports = Ports(*free_ports(3))
    config = write_config(work / "config.properties", ports, art.store)
    with config.open("a") as fh:
        fh.write(f"worker_fork_server={'true' if fork_server else 'false'}\n")
    server = ServerProcess("dagserve", dagserve_command(config, art.store, "echo=" + art.echo_mar),
                           work / "run", ports)
    server.start()
    try:
        startup = server.wait_first_inference("/predictions/echo", b"x" * 1024)
        echo_roles = settled_tree(server.pid)
        server.register_model("shapes", art.cnn.mar.name, batch_size=1, max_batch_delay_ms=5,
                              workers=1)
        image = sample_image()
        since = time.perf_counter()
        server.wait_first_inference("/predictions/shapes", image, since=since)
        one = {pid: smaps(pid) for pid in worker_pids(server, "shapes")}
        server._manage("PUT", "/models/shapes?min_worker=3&synchronous=true", "scale")
        server.wait_first_inference("/predictions/shapes", image)
        three = {pid: smaps(pid) for pid in worker_pids(server, "shapes")}
        extra = [m for pid, m in three.items() if pid not in one and m is not None]
        reply = server.register_workflow(art.chains[3], "chain3")
        if reply.status != 200:
            raise SystemExit(f"chain3: {reply.message()}")
        server.wait_first_inference("/wfpredict/chain3", b"x" * 1024)
        roles = classify(server.pid)
        chains = [art.chains[3], build_shared_model_wars(art)["schain3"]]
        examples = measure_examples(server, wars + chains)
        return {
            "examples": examples,
            "fork_server": fork_server,
            "startup_to_first_inference_s": round(startup, 3),
            "echo_server": asdict(_tree_total(echo_roles)),
            "echo_server_by_role": _by_role(echo_roles),
            "cnn_first_worker": asdict(next(iter(one.values()))),
            "cnn_extra_workers": [asdict(m) for m in extra],
            "frontend": asdict(_total(roles["frontend"])),
            "fork_server_process": asdict(_total(roles["fork server"])),
            "workers": len(roles["workers"]),
            "all_workers": asdict(_total(roles["workers"])),
            "whole_server": asdict(_tree_total(roles)),
        }
    finally:
        server.stop()


def table(results: list[dict]) -> str:
    def cell(m: dict) -> str:
        return f"{m['rss']:.0f} / {m['pss']:.0f} / {m['uss']:.0f}"

    rows = ["| MiB (RSS / PSS / USS) | " + " | ".join(
        "fork server" if r["fork_server"] else "one interpreter per worker" for r in results)
        + " |", "|---|" + "---|" * len(results)]
    rows.append("| whole server with the echo model only | " + " | ".join(
        cell(r["echo_server"]) + " (PSS: " + ", ".join(
            f"{role} {m['pss']:.0f}" for role, m in r["echo_server_by_role"].items()) + ")"
        for r in results) + " |")
    rows.append("| CNN worker, the first | " + " | ".join(cell(r["cnn_first_worker"])
                                                         for r in results) + " |")
    rows.append("| CNN worker, each extra (mean) | " + " | ".join(
        cell({k: sum(m[k] for m in r["cnn_extra_workers"]) / max(1, len(r["cnn_extra_workers"]))
              for k in ("rss", "pss", "uss")}) for r in results) + " |")
    rows.append("| fork server process | " + " | ".join(
        cell(r["fork_server_process"]) if r["fork_server"] else "-" for r in results) + " |")
    rows.append("| frontend | " + " | ".join(cell(r["frontend"]) for r in results) + " |")
    rows.append("| whole server: frontend + echo + 3 CNN + 3-node chain | " + " | ".join(
        cell(r["whole_server"]) + f" ({r['workers']} workers)" for r in results) + " |")
    rows.append("| start to first inference (echo), s | " + " | ".join(
        f"{r['startup_to_first_inference_s']:.2f}" for r in results) + " |")
    for i, example in enumerate(results[0].get("examples", [])):
        rows.append(f"| + workflow `{example['workflow']}`: workers added, RSS / PSS "
                    f"/ USS added | " + " | ".join(_example_cell(r["examples"][i])
                                                   for r in results) + " |")
    return "\n".join(rows)


def _example_cell(example: dict) -> str:
    if "error" in example:
        return f"not registered: {example['error']}"
    return (f"{example['workers_added']} workers for {example['nodes']} nodes, "
            f"{example['rss_added']:.0f} / {example['pss_added']:.0f} / "
            f"{example['uss_added']:.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT / "memory")
    args = parser.parse_args(argv)
    results = [run_mode(mode, args.out / ("fork" if mode else "spawn")) for mode in (True, False)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
