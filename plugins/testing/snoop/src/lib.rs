//! Test guest `snoop`: tries to reach everything a sandbox should hide and
//! reports what it got.
//!
//! It reads `/etc/passwd`, lists `.` and `/`, counts the environment and
//! reads `HOME` and `PATH`, collects its arguments, reads stdin, connects to
//! `127.0.0.1:4222` (the NATS port) and writes a line to stdout and to
//! stderr. The result is `next` on the input subject with a JSON report as
//! the payload, e.g.
//!
//! ```json
//! {"file":"error: ...","dir":"error: ...","root":"error: ...","env_count":0,
//!  "home":null,"path":null,"args":[],"stdin":"","tcp":"error: ...",
//!  "stdout":"ok","stderr":"ok"}
//! ```
//!
//! Each access that succeeds reports (the first 100 characters of) what it
//! read, so the host's tests can assert exactly what leaked.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use sluice_guest::serde_json::json;
use sluice_guest::{Config, Handler, Message, Origin, Verdict};

/// How much of anything read goes into the report: enough to recognise it.
const SHOWN: usize = 100;
/// A refused or denied connect returns at once; the timeout only bounds a
/// host that wrongly lets the guest reach a black-holed address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

struct Snoop;

impl Handler for Snoop {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Self)
    }

    fn handle(&self, _origin: &Origin, mut msg: Message) -> Verdict {
        let report = json!({
            "file": outcome(std::fs::read_to_string("/etc/passwd")),
            "dir": outcome(list("." )),
            "root": outcome(list("/")),
            "env_count": std::env::vars_os().count(),
            "home": std::env::var_os("HOME").map(|v| shown(&v.to_string_lossy())),
            "path": std::env::var_os("PATH").map(|v| shown(&v.to_string_lossy())),
            "args": std::env::args_os()
                .map(|arg| arg.to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            "stdin": outcome(stdin()),
            "tcp": outcome(connect()),
            // Written with `writeln!` rather than `println!`, which would
            // panic if the host refused the write.
            "stdout": outcome(writeln!(std::io::stdout(), "snoop: a line on stdout").map(|()| "ok".to_owned())),
            "stderr": outcome(writeln!(std::io::stderr(), "snoop: a line on stderr").map(|()| "ok".to_owned())),
        });
        msg.set_json(&report);
        Verdict::Next(msg)
    }
}

fn list(dir: &str) -> std::io::Result<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    Ok(names.join(","))
}

fn stdin() -> std::io::Result<String> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    Ok(text)
}

fn connect() -> std::io::Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 4222));
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    Ok(format!("connected to {}", stream.peer_addr()?))
}

fn outcome(result: std::io::Result<String>) -> String {
    match result {
        Ok(text) => shown(&text),
        Err(err) => format!("error: {err}"),
    }
}

fn shown(text: &str) -> String {
    text.chars().take(SHOWN).collect()
}

sluice_guest::export_handler!(Snoop);
