"""What a user waits for, measured side by side in one run against issue 15's targets: `make bench`
(or python benchmarks/backfill.py).

1. The full four-engine replay with monthly deposits as a user types it, database and report
   included: `eternal backfill --start 2020-09-14 --end 2026-01-01 --monthly-deposit 1000
   --data-dir DATA --out TMP --no-progress`, each run a fresh process with no Prefect server
   configured (a temporary PREFECT_HOME without a profile, PREFECT_API_URL unset). Wall and CPU
   time (user + system of the process and its children): the plain runs of part 3's pairs (the
   Prefect server stopped by SIGSTOP meanwhile, once idle: as with none running). Peak memory
   from one run of its own, not timed (the server starts beside it): the proportional set sizes (PSS) of the process and all its children
   summed, sampled every 20 ms with psutil (a page shared by the backfill and its forked children
   counts once). A sample costs about 15 ms of CPU: a sampled run is 0.2-1 s slower.
2. The loop in process, the data read before: `eternal.replay.run_backfill` alone (in memory, no
   database, no report, `compare_breakers=False`: one pass over the days; the CLI makes a second
   pass without breakers when any fired) over the same window -> simulated days per second. Then
   windows of 1, 3 and 5 years ending 2026-01-01 (the 5 are the full window's run, 5.3 years): ms
   per simulated day, and ms per day of 2025 in each (the same days, after 0, 2 or 4.3 years of
   history: flat when history costs nothing).
3. The same command as a Prefect flow run: one Prefect server (uvicorn on the server app, as
   Prefect's own temporary server, in a temporary PREFECT_HOME) started once, then each pair runs
   the command with PREFECT_API_URL unset and set, alternating which goes first; the added seconds
   are the paired differences. Both runs of a pair are sampled every second (the flow run's memory
   and the server's, for the note beside the figure).
4. One warm daily-cycle flow run (`benchmarks/daily_flow.py`, in its own process on the same
   server): a paper ledger in a temporary SQLite holding the real market data; the first run
   starts the portfolio and warms imports and the client, then one run per following day. Our
   work = the wall inside the `drive` task's function (the driver, the ledger's SQL, the data
   checks, the report and alerts: `tasks/drive.py`, `tasks/record.py`, `eternal/`) minus the
   Prefect artifact calls made inside it; the rest of the flow run's wall is Prefect's (flow and
   task run creation, state changes, logging to the API, result handling). The same share by CPU
   time beside it (ours in the task's thread / the flow's whole process; the server's not counted).
5. `benchmarks/peers.py` (ours vs backtrader, fresh processes, BENCH_PAIRS alternating pairs): its
   output as it prints it, and its ratio in the table.

Ends with one table: figure, measured (median and range of BENCH_RUNS runs, default 3; one value
where there is one: the peak memory's sampled run, the peers' ratio of their medians), target,
met. BENCH_PARTS (default "loop,fresh,daily,peers") picks parts. Exits 1 when a part fails or the
peers' trade lists disagree; a missed target is a "no" in the table, not a failure.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                 # this checkout's eternal, tasks, flows
DATA = Path(os.environ.get("ETERNAL_DATA_DIR") or ROOT.parent / "shared" / "data").resolve()
RUNS = os.environ.get("BENCH_RUNS", "3")
PARTS = set(os.environ.get("BENCH_PARTS", "loop,fresh,daily,peers").split(","))
KNOWN_PARTS = {"loop", "fresh", "daily", "peers"}
START, END, DEPOSIT = "2020-09-14", "2026-01-01", 1_000.0
# windows ending END; the "5 years" are the full window (5.3 years from START): its run is reused
YEARS = {1: "2025-01-01", 3: "2023-01-01", 5: START}
MIB = 1024 * 1024
ENV = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
       "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
for name in ("PREFECT_API_URL", "PREFECT_PROFILE",     # set again where a part wants a server
             "ETERNAL_BACKFILL_DATABASE_URL"):          # each backfill's ledger: OUT/backfill.db, fresh
    ENV.pop(name, None)

# issue 15's targets
WALL_S, MEMORY_MIB, DAYS_PER_S, FLOW_ADDED_S, OUR_SHARE, PEER_RATIO = 5.0, 500.0, 2_000.0, 2.0, 0.30, 1.0
FLAT = 1.2      # ours: 2025's ms/day after 4.3 years of history at most 1.2x its cost after none


@dataclass
class Row:
    """One line of the final table; `values` are what the median and range are taken over."""

    figure: str
    values: list[float]
    unit: str
    target: str
    met: bool | None
    note: str = ""
    fmt: str = "{:.2f}"

    def measured(self) -> str:
        if not self.values:
            return "-"
        m = self.fmt.format(statistics.median(self.values))
        if len(self.values) == 1:
            return f"{m} {self.unit}"
        return f"{m} {self.unit} ({self.fmt.format(min(self.values))} to {self.fmt.format(max(self.values))})"


@dataclass
class Run:
    """One fresh process: wall s, CPU s (user + system), peak summed PSS in bytes (`tree_rss`), its output."""

    wall: float
    cpu: float
    peak_rss: int
    out: str
    extra_rss: int = 0           # the peak of other processes sampled beside it (the Prefect server)
    extra_cpu: float = 0.0


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def spread(xs: list[float], fmt: str = "{:.2f}", unit: str = "s") -> str:
    if not xs:
        return "-"
    return (f"{fmt.format(statistics.median(xs))} {unit} "
            f"({fmt.format(min(xs))} to {fmt.format(max(xs))})")


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def tree_rss(pids: list[int]) -> int:
    """Memory of these processes and all their descendants, summed (bytes): each one's proportional
    set size (PSS: a page shared by n processes counts 1/n in each, so a forked child's pages shared
    with its parent count once), its resident set size where PSS cannot be read."""
    import psutil

    total = 0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for p in procs:
            try:
                total += getattr(p.memory_full_info(), "pss", None) or p.memory_info().rss
            except psutil.Error:
                pass
    return total


def fresh(cmd: list[str], env: dict, beside: int | None = None, every: float | None = 0.02) -> Run:
    """Runs `cmd` to its end in a fresh process; samples its tree's memory (`tree_rss`) (and `beside`'s, the
    server's, apart) every `every` s (None: not at all; a sample reads /proc/PID/smaps_rollup of each process,
    about 15 ms for a backfill's tree: at 20 ms it costs the run 0.2-1 s of its wall; the timed runs are
    sampled every second, both sides of a pair alike). The process runs in a session of its own: when
    this one is interrupted (Ctrl-C, SIGTERM) it is interrupted too, and killed with its children if it
    has not ended 10 s later (`end_tree`). Raises SystemExit with its output when it fails."""
    have_psutil = every is not None and importlib.util.find_spec("psutil") is not None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    beside_cpu0 = _cpu_of(beside)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    peak, extra, stop = [0], [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss([proc.pid]))
            if beside is not None:
                extra[0] = max(extra[0], tree_rss([beside]))
            stop.wait(every)

    sampler = threading.Thread(target=sample, daemon=True)
    if have_psutil:
        sampler.start()
    try:
        out, _ = proc.communicate()
    except BaseException:
        end_tree(proc)
        raise
    finally:
        stop.set()
    wall = time.perf_counter() - t
    if have_psutil:
        sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out}")
    if not have_psutil:           # the largest single child so far, not the tree: a lower bound
        peak[0] = after.ru_maxrss * 1024
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(wall, cpu, peak[0], out, extra[0], _cpu_of(beside) - beside_cpu0)


def end_tree(proc: subprocess.Popen, ask: int = signal.SIGINT, grace: float = 10.0) -> None:
    """Ends a process started in a session of its own and everything in its process group: SIGCONT
    (a stopped one, the Prefect server during a plain run, would hold the next signal pending),
    `ask` (SIGINT: a backfill cleans up as after Ctrl-C; SIGTERM: the server stops), then SIGKILL
    to what is left after `grace` s."""
    for sig in (signal.SIGCONT, ask):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def settle(pid: int, most: float = 10.0) -> None:
    """Waits (at most `most` s) until process `pid` uses under 5 % of a core over 0.5 s: the Prefect
    server done with what a flow run sent it (its events and logs written) before it is stopped."""
    end = time.perf_counter() + most
    while time.perf_counter() < end:
        before = _cpu_of(pid)
        time.sleep(0.5)
        if _cpu_of(pid) - before < 0.025:
            return


def _cpu_of(pid: int | None) -> float:
    if pid is None or importlib.util.find_spec("psutil") is None:
        return 0.0
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        return sum(sum(p.cpu_times()[:2]) for p in procs)
    except psutil.Error:
        return 0.0


def backfill_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "eternal.cli", "backfill", "--start", START, "--end", END,
            "--monthly-deposit", f"{DEPOSIT:g}", "--data-dir", str(DATA), "--out", str(out), "--no-progress"]


# --- the Prefect server ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    began: float


def start_server(home: Path) -> Server:
    """A Prefect server on a free local port with its database in `home`, as Prefect starts its
    own temporary one (uvicorn on the server app, no UI), starting (`server_up` waits for it)."""
    port = free_port()
    app_dir = Path(importlib.util.find_spec("prefect").origin).parents[1]
    env = {**ENV, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "0"}
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory",
                             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "error", "--lifespan", "on"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    return Server(proc, f"http://127.0.0.1:{port}/api", began)


def server_up(server: Server) -> tuple[str, float]:
    """Waits until `server` answers /health -> (its API URL, s since it was started)."""
    proc, url = server.proc, server.url
    while time.perf_counter() - server.began < 300:
        if proc.poll() is not None:
            raise SystemExit(f"the Prefect server exited ({proc.returncode}): {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return url, time.perf_counter() - server.began
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the Prefect server did not answer /health within 300 s")


# --- 1 and 3: fresh processes, plain and as a Prefect flow run -----------------------------------

def part_memory(report: Report, tmp: Path) -> None:
    """Item 1's peak memory: one run sampled every 20 ms (`fresh`), not timed (the Prefect server for
    parts 3 and 4 starts beside it: a user without one has none; its wall is not a figure here)."""
    home = tmp / "prefect-home-plain"          # no profiles.toml: no Prefect server configured
    home.mkdir(exist_ok=True)
    sampled = fresh(backfill_cmd(tmp / "plain-mem"), {**ENV, "PREFECT_HOME": str(home)})
    if "final equity" not in sampled.out:
        report.failures.append("the sampled backfill printed no summary")
    mem = [sampled.peak_rss / MIB]
    print(f"  peak memory {mem[0]:.0f} MiB: the process tree's PSS summed, sampled every 20 ms (a run apart "
          "from the timed ones)", flush=True)
    report.rows.append(Row("full backfill: peak memory, all processes", mem, "MiB", f"< {MEMORY_MIB:g} MiB",
                           mem[0] < MEMORY_MIB, "", fmt="{:.0f}"))


def part_flow(report: Report, server: subprocess.Popen, url: str, tmp: Path) -> None:
    """Items 1 and 3: RUNS pairs, the same command with no Prefect server configured (item 1's wall
    and CPU; the server stopped by SIGSTOP meanwhile, once it is idle: as with none running) and as
    a flow run on `server`, alternating which goes first; both sampled every second (the flow run's
    memory, the server's beside it: about 1.5 % of a core), so the sampling weighs the same on both
    sides of a pair."""
    home = tmp / "prefect-home-plain"
    home.mkdir(exist_ok=True)
    plain_env = {**ENV, "PREFECT_HOME": str(home)}
    flow_env = {**ENV, "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_API_URL": url}
    plain: list[Run] = []
    flow: list[Run] = []
    for n in range(RUNS):
        for which in (("plain", "flow") if n % 2 == 0 else ("flow", "plain")):
            out = tmp / f"{which}-pair{n}"
            if which == "plain":        # as with none running: the server stopped (SIGSTOP) meanwhile
                settle(server.pid)
                os.kill(server.pid, signal.SIGSTOP)
                try:
                    plain.append(fresh(backfill_cmd(out), plain_env, every=1.0))
                finally:
                    os.kill(server.pid, signal.SIGCONT)
            else:
                flow.append(fresh(backfill_cmd(out), flow_env, beside=server.pid, every=1.0))
        equities = {json.loads((tmp / f"{w}-pair{n}" / "summary.json").read_text())["final_equity"]
                    for w in ("plain", "flow")}
        if "final equity" not in plain[-1].out:
            report.failures.append(f"pair {n + 1}: the plain backfill printed no summary")
        if len(equities) != 1:
            report.failures.append(f"pair {n + 1}: final equity differs plain vs flow: {sorted(equities)}")
        print(f"  pair {n + 1}: plain {plain[-1].wall:6.2f} s wall, {plain[-1].cpu:5.2f} s CPU | flow "
              f"{flow[-1].wall:6.2f} s wall, {flow[-1].cpu:5.2f} s CPU (+ server {flow[-1].extra_cpu:4.2f} s CPU), "
              f"{flow[-1].peak_rss / MIB:4.0f} MiB + server {flow[-1].extra_rss / MIB:4.0f} MiB   (load {load()})",
              flush=True)
    added = [f.wall - p.wall for p, f in zip(plain, flow)]
    added_cpu = [f.cpu - p.cpu for p, f in zip(plain, flow)]          # in the CLI's process
    server_cpu = [f.extra_cpu for f in flow]
    flow_mem = [(f.peak_rss + f.extra_rss) / MIB for f in flow]
    walls, cpus = [r.wall for r in plain], [r.cpu for r in plain]
    print(f"  no Prefect server configured (the server stopped meanwhile): wall {spread(walls)}, CPU {spread(cpus)}")
    print(f"  as a Prefect flow run:              wall {spread([r.wall for r in flow])}, "
          f"CPU {spread([r.cpu for r in flow])} + server {spread([r.extra_cpu for r in flow])}, "
          f"peak {spread(flow_mem, '{:.0f}', 'MiB')} with the server")
    print(f"  added by the flow run (paired):     wall {spread(added)}; CPU {spread(added_cpu)} in the CLI's process, "
          f"{spread(server_cpu)} in the server's (partly in parallel on an idle 2-core machine)")
    report.rows += [
        Row("full backfill, fresh process: wall", walls, "s", f"< {WALL_S:g} s",
            statistics.median(walls) < WALL_S, f"CPU {spread(cpus)}"),
        Row("Prefect flow run: added wall", added, "s", f"<= {FLOW_ADDED_S:g} s",
            statistics.median(added) <= FLOW_ADDED_S,
            f"added CPU {spread(added_cpu)} in the CLI, {spread(server_cpu)} in the server; flow run and "
            f"server peak {spread(flow_mem, '{:.0f}', 'MiB')}"),
    ]


# --- 2: the loop in process ------------------------------------------------------------------

def part_loop(report: Report) -> None:
    from eternal.config import load_settings
    from eternal.data.csv_files import read_dir
    from eternal.models import utc
    from eternal.replay import run_backfill

    settings = load_settings()
    data = read_dir(DATA)

    # wall (perf_counter) is the figure; this process's CPU time (process_time) beside it is about
    # what the wall would be on an idle machine (the replay is single-threaded). Both clocks are
    # read at each close: about 1 us against milliseconds per day.
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}

    def replay(start: str) -> dict[str, tuple[float, list[float]]]:
        """Per clock: (s of run_backfill, the clock at each day's close minus the clock at the start)."""
        stamps: dict[str, list[float]] = {c: [] for c in clocks}

        def on_day(*_) -> None:
            stamps["wall"].append(time.perf_counter())
            stamps["cpu"].append(time.process_time())

        t = {c: clocks[c]() for c in clocks}
        run_backfill(data, settings, start=utc(start), end=utc(END), progress=False, monthly_deposit=DEPOSIT,
                     compare_breakers=False, on_day=on_day)
        took = {c: clocks[c]() - t[c] for c in clocks}
        return {c: (took[c], [x - t[c] for x in stamps[c]]) for c in clocks}

    rate: dict[str, list[float]] = {c: [] for c in clocks}
    loop_rate: dict[str, list[float]] = {c: [] for c in clocks}
    setup: dict[str, list[float]] = {c: [] for c in clocks}
    per_day = {c: {y: [] for y in YEARS} for c in clocks}
    last_year = {c: {y: [] for y in YEARS} for c in clocks}
    for n in range(RUNS):
        full = replay(START)
        for c, (took, stamps) in full.items():
            rate[c].append(len(stamps) / took)
            loop_rate[c].append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
            setup[c].append(stamps[0])
        for years, start in YEARS.items():
            for c, (took, stamps) in (full if start == START else replay(start)).items():
                per_day[c][years].append(1000 * took / len(stamps))
                tail = stamps[-366:]                 # 2025's 365 closes
                last_year[c][years].append(1000 * (tail[-1] - tail[0]) / (len(tail) - 1))
        print(f"  round {n + 1}: {rate['wall'][-1]:5.0f} days/s wall, {rate['cpu'][-1]:5.0f} CPU over "
              f"{START}..{END}; ms/day of 2025 after 0/2/4.3 years: "
              f"{' / '.join(f'{last_year['wall'][y][-1]:.2f}' for y in YEARS)} wall, "
              f"{' / '.join(f'{last_year['cpu'][y][-1]:.2f}' for y in YEARS)} CPU   (load {load()})", flush=True)
    for c in clocks:
        print(f"  {c:>4}: run_backfill {START}..{END}, in memory: {spread(rate[c], '{:.0f}', 'days/s')}; its loop "
              f"(first to last close) {spread(loop_rate[c], '{:.0f}', 'days/s')}; before the first close "
              f"(checks, market view) {spread(setup[c])}")
        for years in YEARS:
            print(f"        {years} year(s) to {END}: {spread(per_day[c][years], '{:.3f}', 'ms/day')} overall, "
                  f"2025's days {spread(last_year[c][years], '{:.3f}', 'ms/day')}")
    growth = {c: [b / a for a, b in zip(last_year[c][1], last_year[c][5])] for c in clocks}
    report.rows += [
        Row("loop: simulated days/s (run_backfill)", rate["wall"], "days/s", f">= {DAYS_PER_S:,.0f}",
            statistics.median(rate["wall"]) >= DAYS_PER_S, f"by CPU time {spread(rate['cpu'], '{:.0f}', 'days/s')}",
            fmt="{:.0f}"),
        *(Row(f"loop: ms per day over {y} year(s)", per_day["wall"][y], "ms", "flat", None,
              f"by CPU time {spread(per_day['cpu'][y], '{:.3f}', 'ms')}", fmt="{:.3f}") for y in YEARS),
        Row("loop: 2025's ms/day after 4.3 years vs none", growth["wall"], "x", f"<= {FLAT:g}x (flat)",
            statistics.median(growth["wall"]) <= FLAT, f"by CPU time {spread(growth['cpu'], unit='x')}"),
    ]


# --- 4: one warm daily-cycle flow run ---------------------------------------------------------

def part_daily(report: Report, url: str, tmp: Path) -> None:
    env = {**ENV, "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_API_URL": url}
    run = fresh([sys.executable, str(ROOT / "benchmarks" / "daily_flow.py"), "--runs", str(RUNS),
                 "--dir", str(tmp / "daily")], env)
    lines = [json.loads(line) for line in run.out.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"the daily-cycle worker printed nothing usable:\n{run.out}")
    first, warm = lines[0], lines[1:]
    walls = [r["wall"] for r in warm]
    ours = [r["ours"] for r in warm]
    share = [r["ours"] / r["wall"] for r in warm]
    cpu_pct = [100 * r["ours_cpu"] / r["cpu"] for r in warm]
    print(f"  first run {first['asof']} (starts the portfolio): wall {first['wall']:.2f} s, ours {first['ours']:.2f} s")
    for r in warm:
        print(f"  warm run {r['asof']}: wall {r['wall']:.3f} s, ours {r['ours']:.3f} s (the drive task "
              f"{r['task']:.3f} s minus Prefect artifacts {r['artifacts']:.3f} s), {r['orders']} orders; CPU "
              f"{r['cpu']:.3f} s in the flow's process, ours {r['ours_cpu']:.3f} s")
    pct = [100 * x for x in share]
    print(f"  warm runs: wall {spread(walls, '{:.3f}')}, ours {spread(ours, '{:.3f}')}, ours / wall "
          f"{spread(pct, '{:.0f}', '%')}, Prefect's {spread([100 - x for x in pct], '{:.0f}', '%')}; by CPU time "
          f"ours / the flow process's {spread(cpu_pct, '{:.0f}', '%')} (the server's CPU not counted)")
    report.rows.append(Row("warm daily-cycle run: our work / wall", pct, "%",
                           f"<= {100 * OUR_SHARE:.0f} %", statistics.median(share) <= OUR_SHARE,
                           f"wall {spread(walls, '{:.3f}')}, ours {spread(ours, '{:.3f}')}; by CPU time "
                           f"{spread(cpu_pct, '{:.0f}', '%')} of the flow's process", fmt="{:.0f}"))


# --- 5: peers --------------------------------------------------------------------------------

def part_peers(report: Report, tmp: Path) -> None:
    home = tmp / "prefect-home-peers"          # no Prefect server configured, whatever the user's profile
    home.mkdir()
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "peers.py")],
                            env={**ENV, "PREFECT_HOME": str(home)}, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate()
    except BaseException:
        end_tree(proc)          # peers.py and the run it is timing
        raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    print("  " + done.stdout.rstrip().replace("\n", "\n  "))
    if done.returncode != 0:
        report.failures.append(f"peers.py exited {done.returncode}: {done.stderr.strip()[-500:]}")
    ratio = re.search(r"ratio ours / backtrader \(median walls\): ([\d.]+)x", done.stdout)
    walls = re.findall(r"wall\s+([\d.]+) s\s+\(([\d.]+)-([\d.]+)\)", done.stdout)
    if ratio is None:
        report.failures.append("peers.py printed no ratio")
        return
    note = (f"ours {walls[0][0]} s, backtrader {walls[1][0]} s (medians)" if len(walls) >= 2 else "")
    r = float(ratio.group(1))
    report.rows.append(Row("TREND-1 wall, ours / backtrader", [r], "x", f"<= {PEER_RATIO:g}x", r <= PEER_RATIO, note))


# --- the run ---------------------------------------------------------------------------------

def table(report: Report) -> None:
    rows = report.rows
    head = "measured: median (range)"
    w = max(len(r.figure) for r in rows)
    m = max(len(head), *(len(r.measured()) for r in rows))
    t = max(len("target"), *(len(r.target) for r in rows))
    print(f"\n{'figure':<{w}}  {head:<{m}}  {'target':<{t}}  met")
    print(f"{'-' * w}  {'-' * m}  {'-' * t}  ---")
    for r in rows:
        met = "-" if r.met is None else "yes" if r.met else "no"
        print(f"{r.figure:<{w}}  {r.measured():<{m}}  {r.target:<{t}}  {met:<3}  {r.note}")


def interrupted(signum, frame) -> None:
    """SIGTERM as Ctrl-C: the `finally` blocks end the processes started and remove the temp dir."""
    raise KeyboardInterrupt


def main() -> int:
    global RUNS
    if not RUNS.isdigit() or int(RUNS) < 1:
        print(f"error: BENCH_RUNS={RUNS!r}: a whole number of runs, 1 or more", file=sys.stderr)
        return 2
    RUNS = int(RUNS)
    if not PARTS or PARTS - KNOWN_PARTS:
        print(f"error: BENCH_PARTS={','.join(sorted(PARTS))!r}: unknown part(s) {', '.join(sorted(PARTS - KNOWN_PARTS))}; "
              f"choose from {','.join(sorted(KNOWN_PARTS))}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, interrupted)
    began = time.perf_counter()
    print(f"issue 15 benchmarks: {RUNS} runs each (BENCH_RUNS), parts {','.join(sorted(PARTS))} (BENCH_PARTS); "
          f"{os.cpu_count()} CPUs, load average {load()}; data {DATA}", flush=True)
    report = Report()
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp_name:
        tmp = Path(tmp_name)
        if "loop" in PARTS:
            print(f"\n2. the loop in process: run_backfill, all engines, {DEPOSIT:,.0f} USDT monthly, data read before",
                  flush=True)
            part_loop(report)
        server = None
        try:
            if PARTS & {"fresh", "daily"}:      # starts beside the memory run (neither is timed)
                server = start_server(tmp / "prefect-home")
            if "fresh" in PARTS:
                print(f"\n1. eternal backfill --start {START} --end {END} --monthly-deposit {DEPOSIT:g}, fresh processes, "
                      "no Prefect server configured", flush=True)
                part_memory(report, tmp)
            if server is not None:
                url, took = server_up(server)
                print(f"\n(a Prefect server for parts 1, 3 and 4 at {url}, started beside the memory run: "
                      f"answering {took:.1f} s after its start)", flush=True)
            if "fresh" in PARTS:
                print(f"\n1 and 3. the same, {RUNS} alternating pairs: no Prefect server configured / PREFECT_API_URL set",
                      flush=True)
                part_flow(report, server.proc, url, tmp)
            if "daily" in PARTS:
                print(f"\n4. warm daily-cycle flow runs (paper, SQLite, Prefect server), {RUNS} after the first",
                      flush=True)
                part_daily(report, url, tmp)
        finally:
            if server is not None:
                end_tree(server.proc, signal.SIGTERM)
        if "peers" in PARTS:
            print("\n5. benchmarks/peers.py", flush=True)
            part_peers(report, tmp)
    if report.rows:
        table(report)
    busy = float(load().split()[0])
    if busy > (os.cpu_count() or 1):
        print(f"\nthe machine is busy (load {busy:.1f} on {os.cpu_count()} CPUs): walls are inflated; the CPU times "
              "beside them are about what an idle machine gives (peers.py prints walls only)")
    for line in report.failures:
        print(f"FAILED: {line}")
    print(f"\n{time.perf_counter() - began:.0f} s in all; load average now {load()} (1, 5, 15 min)")
    return 1 if report.failures else 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: every process it started is ended, its temporary directory removed", file=sys.stderr)
        raise SystemExit(130) from None
