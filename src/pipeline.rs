//! Deliveries prepared on several threads and taken back in input order.
//!
//! Both kinds of run split their work the same way: a pure step per delivery (parse, map,
//! serialise) that may run on any thread in any order, and an ordered step (what the run has
//! seen, the store, the output) that must see deliveries in input order. Keeping the split in
//! one place means the dry run and the real run cannot drift apart, and that one job or eight
//! give the same result.
//!
//! With more than one job, a reader thread cuts the input into batches; for each, it sends the
//! batch to the workers together with a one-batch result slot, and sends the slot's receiving
//! end, in order, to the caller's thread. The caller waits on the slots one by one, so results
//! come back in input order, and the bounded channels keep only a few batches in memory.
//!
//! Input is streamed whatever the number of jobs: a batch is cut short whenever the reader has
//! nothing more in hand (see [`Item::Idle`]), so a delivery from a quiet pipe is mapped, stored
//! and sent at once rather than when 31 more arrive. Files still fill whole batches, as the
//! reader's buffer empties only every 256 KB.
//!
//! Inputs that cannot be opened or read travel in the same order as the deliveries
//! ([`Item::Unread`]), so that one job or eight report them at the same place and keep
//! everything read before and after them.

use crate::source::{self, Input, Line};
use std::io;
use std::ops::ControlFlow;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

/// A batch holds up to this many deliveries, or this many bytes of them: enough to keep the
/// channel traffic small against the mapping (about 10 µs a delivery), few enough that the
/// batches in flight stay well under a megabyte.
const BATCH_LINES: usize = 32;
const BATCH_BYTES: usize = 64 * 1024;

/// Batches prepared ahead of the caller, per job. `run`'s caller is the store's one writer,
/// which stops for every commit's fsync: with 2 batches a job ahead (about 20 invoices) the
/// workers filled them within a few ms and waited, and `run --no-send` of 20,000 paid invoices
/// used 1.34 of the 2 cores, 4,450 to 4,630 a second; 8 ahead, 4,840; 32 ahead, 1.7 cores and
/// 5,830 (release, 5 December). The bound is 64 KB of input a batch, 2 MB a job, and its
/// prepared form; a dry run, whose caller only writes stdout, never fills it (peak RSS
/// unchanged).
const AHEAD_PER_JOB: usize = 32;

/// What reading the inputs gives, in input order.
#[derive(Debug)]
pub(crate) enum Item<T> {
    /// One delivery, prepared.
    Delivery(T),
    /// An input that could not be opened, or read to its end (the error names it and the
    /// line). It comes in its place in the order, after what was read of that input, and the
    /// next input is read: one bad file must not lose the others.
    Unread(io::Error),
    /// Nothing more can be read without asking the input, which may wait (a quiet pipe):
    /// what is held back for speed (buffered output) should go out now.
    Idle,
}

impl<L> Item<L> {
    fn map<T>(self, prepare: impl Fn(&L) -> T) -> Item<T> {
        match self {
            Item::Delivery(line) => Item::Delivery(prepare(&line)),
            Item::Unread(e) => Item::Unread(e),
            Item::Idle => Item::Idle,
        }
    }
}

/// Reads every input, runs `prepare` on each delivery on `jobs` threads, and hands the results
/// (and the inputs that could not be read) to `accept` on the calling thread, in input order.
/// `accept` may stop the run early with `ControlFlow::Break` or an error; what was read ahead
/// is then dropped unseen.
pub(crate) fn map_in_order<T: Send, E>(
    inputs: &[Input],
    jobs: usize,
    prepare: impl Fn(&Line) -> T + Sync,
    mut accept: impl FnMut(Item<T>) -> Result<ControlFlow<()>, E>,
) -> Result<(), E> {
    if jobs <= 1 {
        let mut result = Ok(());
        read(inputs, |item| match accept(item.map(&prepare)) {
            Ok(flow) => flow.is_continue(),
            Err(e) => {
                result = Err(e);
                false
            }
        });
        return result;
    }
    std::thread::scope(|scope| {
        let (work_tx, work_rx) = sync_channel::<Work<T>>(1);
        let work_rx = Arc::new(Mutex::new(work_rx));
        let (slots_tx, slots_rx) = sync_channel::<Slot<T>>(jobs * AHEAD_PER_JOB);
        let prepare = &prepare;
        for _ in 0..jobs {
            let work_rx = Arc::clone(&work_rx);
            scope.spawn(move || {
                loop {
                    let next = work_rx.lock().expect("work queue lock").recv();
                    let Ok((batch, slot)) = next else { break };
                    let prepared = batch.into_iter().map(|item| item.map(prepare)).collect();
                    if slot.send(prepared).is_err() {
                        break; // the caller stopped
                    }
                }
            });
        }
        drop(work_rx);
        let reader = scope.spawn(move || read_batches(inputs, &work_tx, &slots_tx));
        let mut result = Ok(());
        'slots: for slot in slots_rx {
            let Ok(batch) = slot.recv() else { break };
            for prepared in batch {
                match accept(prepared) {
                    Ok(ControlFlow::Continue(())) => {}
                    Ok(ControlFlow::Break(())) => break 'slots,
                    Err(e) => {
                        result = Err(e);
                        break 'slots;
                    }
                }
            }
        }
        // Leaving the loop drops the slots' receiver, which stops the reader and so the
        // workers, whatever state they were in.
        reader.join().expect("the reader thread does not panic");
        result
    })
}

type Slot<T> = Receiver<Vec<Item<T>>>;
type Work<T> = (Vec<Item<Line>>, SyncSender<Vec<Item<T>>>);

/// Hands every line of every input, and every input that could not be read, to `take` in
/// order, until it returns false.
fn read(inputs: &[Input], mut take: impl FnMut(Item<Line>) -> bool) {
    for input in inputs {
        let mut lines = match source::read_lines(input) {
            Ok(lines) => lines,
            Err(e) => {
                if !take(Item::Unread(e)) {
                    return;
                }
                continue;
            }
        };
        while let Some(line) = lines.next() {
            let item = match line {
                Ok(line) => Item::Delivery(line),
                Err(e) => Item::Unread(e),
            };
            if !take(item) || (lines.would_read() && !take(Item::Idle)) {
                return;
            }
        }
    }
}

/// Reads every input into batches; stops early, quietly, if the caller went away.
fn read_batches<T>(inputs: &[Input], work: &SyncSender<Work<T>>, slots: &SyncSender<Slot<T>>) {
    let send = |batch: Vec<Item<Line>>| -> bool {
        let (slot_tx, slot_rx) = sync_channel(1);
        slots.send(slot_rx).is_ok() && work.send((batch, slot_tx)).is_ok()
    };
    let mut batch = Vec::new();
    let mut bytes = 0;
    read(inputs, |item| {
        // A partial batch goes when the input has nothing more in hand: waiting for a full
        // one would hold a delivery from a quiet pipe back for as long as the pipe is quiet.
        let idle = matches!(item, Item::Idle);
        if let Item::Delivery(line) = &item {
            bytes += line.text.len();
        }
        batch.push(item);
        if batch.len() < BATCH_LINES && bytes < BATCH_BYTES && !idle {
            return true;
        }
        bytes = 0;
        send(std::mem::take(&mut batch))
    });
    // Empty too when the caller went away: the batch that failed to go was taken.
    if !batch.is_empty() {
        send(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::{Item, map_in_order};
    use crate::source::Input;
    use std::io::Write;
    use std::ops::ControlFlow;

    fn numbered_input(count: usize) -> (tempfile::NamedTempFile, Vec<Input>) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        for n in 1..=count {
            writeln!(file, "{{\"n\": {n}}}").unwrap();
        }
        let input = Input::File(file.path().to_path_buf());
        (file, vec![input])
    }

    #[test]
    fn results_come_back_in_input_order_whatever_the_jobs() {
        let (_file, inputs) = numbered_input(1000);
        for jobs in [1, 2, 3, 8] {
            let mut seen = Vec::new();
            map_in_order::<_, std::io::Error>(
                &inputs,
                jobs,
                |line| line.number,
                |item| {
                    match item {
                        Item::Delivery(number) => seen.push(number),
                        Item::Idle => {}
                        Item::Unread(e) => panic!("{e}"),
                    }
                    Ok(ControlFlow::Continue(()))
                },
            )
            .unwrap();
            assert_eq!(seen, (1..=1000).collect::<Vec<_>>(), "jobs {jobs}");
        }
    }

    #[test]
    fn accept_can_stop_the_run_early() {
        let (_file, inputs) = numbered_input(1000);
        for jobs in [1, 2] {
            let mut seen = 0;
            map_in_order::<_, std::io::Error>(
                &inputs,
                jobs,
                |line| line.number,
                |item| {
                    seen += 1;
                    Ok(if matches!(item, Item::Delivery(10)) {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    })
                },
            )
            .unwrap();
            assert_eq!(seen, 10, "jobs {jobs}");
        }
    }

    #[test]
    fn an_error_from_accept_ends_the_run_with_that_error() {
        let (_file, inputs) = numbered_input(500);
        let result = map_in_order(
            &inputs,
            2,
            |line| line.number,
            |item| {
                if matches!(item, Item::Delivery(300)) {
                    Err(std::io::Error::other("disk full"))
                } else {
                    Ok(ControlFlow::Continue(()))
                }
            },
        );
        assert_eq!(result.unwrap_err().to_string(), "disk full");
    }

    #[test]
    fn an_input_that_cannot_be_read_comes_in_its_place_and_the_next_is_read() {
        let (_first, mut inputs) = numbered_input(40);
        let (_last, last) = numbered_input(3);
        inputs.push(Input::File("/nope/missing.ndjson".into()));
        inputs.extend(last);
        for jobs in [1, 2] {
            let mut seen = Vec::new();
            map_in_order::<_, std::io::Error>(
                &inputs,
                jobs,
                |line| line.number,
                |item| {
                    match item {
                        Item::Delivery(number) => seen.push(number.to_string()),
                        Item::Unread(e) => seen.push(e.to_string()),
                        Item::Idle => {}
                    }
                    Ok(ControlFlow::Continue(()))
                },
            )
            .unwrap();
            assert_eq!(seen.len(), 44, "jobs {jobs}: {seen:?}");
            assert_eq!(seen[39], "40");
            assert!(
                seen[40].starts_with("cannot open /nope/missing.ndjson"),
                "{}",
                seen[40]
            );
            assert_eq!(seen[41..], ["1", "2", "3"]);
        }
    }
}
