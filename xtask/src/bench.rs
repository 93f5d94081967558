//! Benchmarks: filled in by the benchmark tasks.

pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("no benchmark yet")
}
