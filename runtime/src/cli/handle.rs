//! `sluice handle`: run one plugin, or a tenant's configured pipeline, on one
//! message read from stdin, with no NATS, and print what the host would do as
//! one JSON object. Exit 0 whatever the verdict; an error only when the host
//! itself cannot do its part (missing file, not a handler, bad config).

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use sluice::config::{self, Config};
use sluice::message::GuestFailure;
use sluice::message::{Message, Origin, Verdict};
use sluice::pipeline::Outcome;
use sluice::registry::Registry;
use sluice::wasm::{PluginLimits, Runtime, WasmError};
use sluice::worker::pool::StageRunner;

/// Arguments of `sluice handle`.
#[derive(Debug, clap::Args)]
pub struct HandleArgs {
    /// A plugin component to run on its own.
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    plugin: Option<PathBuf>,
    /// `KEY=VALUE` passed to the plugin's `init` (with `--plugin`).
    #[arg(long = "plugin-config", value_name = "KEY=VALUE", requires = "plugin")]
    plugin_config: Vec<String>,
    /// A config file whose tenant pipeline to run.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The tenant (with `--config`: which tenant's pipeline; default: the
    /// only one).
    #[arg(long)]
    tenant: Option<String>,
    /// The message's subject. Default: from the tenant's filter, or
    /// `<tenant>.in.test`.
    #[arg(long)]
    subject: Option<String>,
    /// A message header, `KEY=VALUE`; repeatable.
    #[arg(long = "header", value_name = "KEY=VALUE")]
    headers: Vec<String>,
    /// The stream named in the origin.
    #[arg(long, default_value = "SLUICE")]
    stream: String,
    /// The stream sequence named in the origin.
    #[arg(long, default_value_t = 1)]
    seq: u64,
    /// The delivery count named in the origin.
    #[arg(long, default_value_t = 1)]
    delivered: u32,
    /// Per-call deadline for `--plugin`.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    deadline: Duration,
    /// Memory limit for `--plugin`, e.g. `64MiB`.
    #[arg(long, default_value = "64MiB", value_parser = config::parse_bytes)]
    memory: u64,
}

fn key_value(s: &str, what: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => bail!("{what} `{s}` is not KEY=VALUE"),
    }
}

pub fn run(args: HandleArgs) -> anyhow::Result<()> {
    let mut payload = Vec::new();
    std::io::stdin()
        .read_to_end(&mut payload)
        .context("reading the payload from stdin")?;
    let headers = args
        .headers
        .iter()
        .map(|h| key_value(h, "--header"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let published_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));

    let result = if let Some(path) = &args.plugin {
        let tenant = args.tenant.clone().unwrap_or_else(|| "demo".to_owned());
        let subject = args
            .subject
            .clone()
            .unwrap_or_else(|| format!("{tenant}.in.test"));
        let settings = args
            .plugin_config
            .iter()
            .map(|c| key_value(c, "--plugin-config"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin")
            .to_owned();
        let runtime = Runtime::new(sluice::config::cache_dir(None))?;
        let limits = PluginLimits {
            deadline: args.deadline,
            memory: args.memory,
            ..PluginLimits::default()
        };
        let plugin = runtime.load_file(&name, path, limits)?;
        let origin = origin(&args, &tenant, published_us);
        let msg = Message {
            subject,
            headers,
            payload: payload.into(),
        };
        match plugin.instantiate(&tenant, &settings) {
            Ok(mut instance) => verdict_json(instance.handle(&origin, msg), None),
            Err(WasmError::InitFailed { failure, .. }) => verdict_json(Err(failure), None),
            Err(e) => return Err(e.into()),
        }
    } else if let Some(path) = &args.config {
        let config = Config::load(path)?;
        let tenant = match &args.tenant {
            Some(t) => t.clone(),
            None => only_tenant(&config)?,
        };
        let Some(tenant_config) = config.tenants.get(&tenant) else {
            bail!(
                "{}: no tenant `{tenant}` (tenants: {})",
                path.display(),
                tenant_list(&config)
            );
        };
        let subject = args
            .subject
            .clone()
            .unwrap_or_else(|| sluice::subject::concrete(&tenant_config.filter, "test"));
        let runtime = Arc::new(Runtime::new(sluice::config::cache_dir(Some(&config)))?);
        let registry = Registry::load(runtime, &config)?;
        let pipeline = Arc::new(registry.pipeline(&config, &tenant)?);
        let origin = origin(&args, &tenant, published_us);
        let msg = Message {
            subject,
            headers,
            payload: payload.into(),
        };
        let limits = config.limits(Some(tenant_config));
        let outcome = StageRunner::default().run(&pipeline, &origin, &msg);
        outcome_json(&outcome, &limits.backoff, origin.delivered)
    } else {
        bail!("give --plugin FILE or --config FILE");
    };
    println!("{result}");
    Ok(())
}

fn origin(args: &HandleArgs, tenant: &str, published_us: u64) -> Origin {
    Origin {
        tenant: tenant.to_owned(),
        stream: args.stream.clone(),
        stream_seq: args.seq,
        delivered: args.delivered,
        published_us,
    }
}

fn only_tenant(config: &Config) -> anyhow::Result<String> {
    let mut ids = config.tenants.keys();
    match (ids.next(), ids.next()) {
        (Some(id), None) => Ok(id.clone()),
        (None, _) => bail!("{}: no tenants configured", config.file.display()),
        _ => bail!(
            "{}: several tenants ({}); choose one with --tenant",
            config.file.display(),
            tenant_list(config)
        ),
    }
}

fn tenant_list(config: &Config) -> String {
    config
        .tenants
        .keys()
        .cloned()
        .collect::<Vec<_>>()
        .join(", ")
}

/// A message as JSON: the payload as a string when it is UTF-8, otherwise
/// base64 under `payload_base64`.
pub fn message_json(m: &Message) -> Value {
    let headers: Vec<Value> = m.headers.iter().map(|(k, v)| json!([k, v])).collect();
    match std::str::from_utf8(&m.payload) {
        Ok(text) => json!({"subject": m.subject, "headers": headers, "payload": text}),
        Err(_) => json!({
            "subject": m.subject,
            "headers": headers,
            "payload_base64": base64::engine::general_purpose::STANDARD.encode(&m.payload),
        }),
    }
}

fn failure_json(f: &GuestFailure) -> Value {
    json!({"kind": f.kind.as_str(), "message": f.message})
}

/// A single plugin's verdict (or failure) as JSON.
fn verdict_json(result: Result<Verdict, GuestFailure>, delay: Option<Duration>) -> Value {
    match result {
        Ok(Verdict::Next(m)) => json!({"verdict": "next", "message": message_json(&m)}),
        Ok(Verdict::Publish(ms)) => {
            json!({"verdict": "publish", "messages": ms.iter().map(message_json).collect::<Vec<_>>()})
        }
        Ok(Verdict::Ack) => json!({"verdict": "ack"}),
        Ok(Verdict::DeadLetter(reason)) => json!({"verdict": "dead-letter", "reason": reason}),
        Ok(Verdict::Retry(ms)) => json!({"verdict": "retry", "delay_ms": ms}),
        Err(f) => json!({
            "verdict": "retry",
            "delay_ms": delay.map_or(0, |d| d.as_millis()),
            "cause": failure_json(&f),
        }),
    }
}

/// A pipeline outcome as JSON, in the same shape as a verdict.
fn outcome_json(outcome: &Outcome, backoff: &[Duration], delivered: u32) -> Value {
    match outcome {
        Outcome::Publish { outputs, plugin } => json!({
            "verdict": "publish",
            "plugin": plugin,
            "messages": outputs.iter().map(message_json).collect::<Vec<_>>(),
        }),
        Outcome::Ack { plugin } => json!({"verdict": "ack", "plugin": plugin}),
        Outcome::DeadLetter { reason, plugin, .. } => {
            json!({"verdict": "dead-letter", "reason": reason, "plugin": plugin})
        }
        Outcome::Retry {
            delay,
            failure,
            plugin,
        } => {
            let delay = delay.unwrap_or_else(|| sluice::sink::backoff_for(backoff, delivered));
            let mut v =
                json!({"verdict": "retry", "delay_ms": delay.as_millis(), "plugin": plugin});
            if let (Some(f), Some(obj)) = (failure, v.as_object_mut()) {
                obj.insert("cause".into(), failure_json(f));
            }
            v
        }
    }
}
