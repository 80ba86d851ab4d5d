"""pytest hooks of the benchmarks: after the run, prints the targets of benches/README.md as
ratios measured in this same run (absolute times on a shared machine mean little), then the
GPU measurements and the exported students' latency table. What the bench files share lives in bench_common.py."""
import bench_common


def pytest_terminal_summary(terminalreporter):
    if bench_common.RESULTS:
        terminalreporter.write_line("\nbenchmark, ratios from this run:")
        for line in bench_common.summary_lines():
            terminalreporter.write_line(line)
    if bench_common.GPU_LINES:
        terminalreporter.write_line("\nGPU measurements:")
        for line in bench_common.GPU_LINES:
            terminalreporter.write_line(line)
    if bench_common.EXPORT_LINES:
        terminalreporter.write_line("\nexported students:")
        for line in bench_common.EXPORT_LINES:
            terminalreporter.write_line(line)
