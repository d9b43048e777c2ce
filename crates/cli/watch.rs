//! `portwatch watch`: wires the watcher the flags describe to its output and hooks, and does
//! the signal handling a library must not do. Building the watcher lives in `select`, the
//! lines in `render`, the hooks in `hooks`.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{SigSet, Signal};
use portwatch_core::StopHandle;

use crate::Result;
use crate::args::{MetricsLabels, WatchArgs, WatchFormat};
use crate::hooks::{HOOK_TIMEOUT, Hooks};
use crate::metrics;
use crate::render::{JsonLine, text_line};
use crate::select::{own_netns, watcher};

pub fn run(args: &WatchArgs, out: &mut impl Write) -> Result<()> {
    // SIGINT and SIGTERM are blocked in every thread (the watcher's inherits the mask) and
    // taken by one thread with sigwait. It is there before anything can block (a Docker
    // daemon that does not answer, a namespace to open): a signal before the watcher runs
    // ends the process at once; after, it stops the watcher, which finishes its cycle,
    // reports pending closes and writes the snapshot, and the event loop below ends.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().map_err(io::Error::from)?;
    let stop_slot: Arc<Mutex<Option<StopHandle>>> = Arc::default();
    let slot = Arc::clone(&stop_slot);
    std::thread::Builder::new().name("portwatch-signals".into()).spawn(move || {
        let sig = signals.wait();
        let stop = slot.lock().unwrap_or_else(|e| e.into_inner());
        match (&*stop, sig) {
            (Some(stop), sig) => {
                if let Ok(sig) = sig {
                    log::info!("{sig}: stopping after this cycle");
                }
                stop.stop();
            }
            // Nothing watched, written or saved yet: nothing to finish.
            (None, _) => std::process::exit(0),
        }
    })?;

    let own = own_netns();
    let listener = args.metrics.map(metrics::bind).transpose()?;
    let watcher =
        watcher(args)?.cmdlines(args.format == WatchFormat::Json || args.exec.is_some()).build()?;
    *stop_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(watcher.stop_handle());
    if let Some(listener) = listener {
        let settings = metrics::Settings {
            labels: args.metrics_labels.unwrap_or(MetricsLabels::Full),
            max_series: args.metrics_max_series.map_or(metrics::DEFAULT_MAX_SERIES, |n| n as usize),
        };
        metrics::serve(listener, watcher.monitor(), settings)?;
    }

    let timeout = args.exec_timeout.unwrap_or(HOOK_TIMEOUT);
    let hooks = args.exec.as_deref().map(|cmd| Hooks::start(cmd, timeout)).transpose()?;
    // Report time never goes backwards, even if the wall clock is stepped back.
    let mut last = std::time::UNIX_EPOCH;
    for event in watcher.events() {
        let reported = last.max(std::time::SystemTime::now());
        last = reported;
        let line = match args.format {
            WatchFormat::Text => Ok(text_line(&event, own, reported)),
            WatchFormat::Json => JsonLine::new(&event, reported).to_line().map_err(io::Error::from),
        };
        let written = line.and_then(|l| writeln!(out, "{l}")).and_then(|()| out.flush());
        if let Err(e) = written {
            // The reader is gone: stop quietly (main turns a broken pipe into exit 0).
            watcher.stop_handle().stop();
            return Err(e.into());
        }
        if let Some(h) = &hooks {
            h.submit(&event, reported);
        }
    }
    if let Some(h) = hooks {
        h.finish();
    }
    Ok(())
}
