//! The floor of the performance benchmark (`benches/perf/run.sh`): what any program that reads
//! NDJSON deliveries and writes JSON requests must at least spend.
//!
//! ```sh
//! cargo run --release --example json-floor -- --bytes N FILE... > /dev/null
//! ```
//!
//! It parses every line of the inputs into a `serde_json::Value` (and drops it) and writes `N`
//! bytes, where `N` is the size of marketsync's dry-run output for the same inputs (run.sh
//! measures it). The bytes go out as the input is consumed, `N × bytes read / input size` so
//! far, through a buffered writer, so output is interleaved with parsing as in a real run. It
//! does no selection, rendering or validation, so nothing that parses and writes the same JSON
//! can be faster.

use clap::Parser;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Parses every NDJSON line with serde_json and writes N bytes")]
struct Args {
    /// Output bytes to write in all (the size of marketsync's output for these inputs).
    #[arg(long)]
    bytes: u64,
    /// NDJSON files, read one line at a time.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let mut total_in = 0u64;
    for path in &args.inputs {
        total_in += std::fs::metadata(path)?.len();
    }
    // What is written: a request-shaped line, repeated; its content does not matter.
    let filler: Vec<u8> =
        br#"{"method":"POST","path":"/api/events","body":{"data":{"type":"event"}}}"#
            .iter()
            .chain(b"\n")
            .copied()
            .cycle()
            .take(64 * 1024)
            .collect();
    let mut out = BufWriter::with_capacity(256 * 1024, io::stdout().lock());
    let (mut read, mut written, mut lines, mut bad) = (0u64, 0u64, 0u64, 0u64);
    let mut line = Vec::new();
    for path in &args.inputs {
        let mut reader = BufReader::with_capacity(256 * 1024, File::open(path)?);
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            read += n as u64;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            lines += 1;
            match serde_json::from_slice::<serde_json::Value>(&line) {
                Ok(value) => drop(value),
                Err(_) => bad += 1,
            }
            // Keep the output in step with the input read so far.
            let due =
                (u128::from(args.bytes) * u128::from(read) / u128::from(total_in.max(1))) as u64;
            while written < due {
                let chunk = (due - written).min(filler.len() as u64) as usize;
                out.write_all(&filler[..chunk])?;
                written += chunk as u64;
            }
        }
    }
    out.flush()?;
    eprintln!("parsed {lines} lines ({bad} not JSON), read {read} bytes, wrote {written} bytes");
    Ok(())
}
