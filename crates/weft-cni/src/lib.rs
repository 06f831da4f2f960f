//! The CNI verbs. `run` maps the environment and stdin to what goes to
//! stdout; every failure becomes the spec's error JSON at this one boundary.

mod add;
mod check;
mod del;
mod env;
mod gc;
mod guard;
mod ipam;
mod record;

pub use env::Env;
/// The first name ADD gives an attachment's host end (tests look for
/// attachments whose names collide).
pub use record::host_veth_name;

use weft_core::cni::config::invalid_config_path;
use weft_core::cni::error::clip;
use weft_core::cni::{version, CniError, Code, NetConf, Version};

/// What the process prints and how it exits.
pub struct Output {
    pub ok: bool,
    pub stdout: Option<String>,
}

pub fn run(env: &Env, stdin: &[u8]) -> Output {
    // Every log line of this call names the attachment and its pod. The
    // span is at error level so that it is on whenever any line is logged
    // (the default level is warn).
    let args = env
        .args
        .as_deref()
        .and_then(|a| weft_core::cni::CniArgs::parse(a).ok())
        .unwrap_or_default();
    let span = tracing::error_span!(
        "cni",
        command = env.command.as_deref().unwrap_or(""),
        container_id = env.container_id.as_deref().unwrap_or(""),
        namespace = args.k8s_pod_namespace.as_deref().unwrap_or(""),
        pod = args.k8s_pod_name.as_deref().unwrap_or(""),
    );
    let _in = span.enter();
    // Nothing below may panic its way out: a panic would leave the runtime
    // with no JSON at all. Catch it and report it as an error instead.
    let r = std::panic::catch_unwind(|| dispatch(env, stdin));
    let requested = requested_version(stdin);
    match r {
        Ok(Ok(stdout)) => Output { ok: true, stdout },
        Ok(Err(e)) => {
            tracing::warn!(code = e.code as u32, msg = %e.msg, "failed");
            Output {
                ok: false,
                stdout: Some(e.to_json(&requested)),
            }
        }
        Err(_) => Output {
            ok: false,
            stdout: Some(
                CniError::new(Code::Internal, "internal error (panic)").to_json(&requested),
            ),
        },
    }
}

/// The request's cniVersion if it is one we speak, for error replies.
fn requested_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(String::from))
        .filter(|v| version::SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| version::LATEST.to_string())
}

fn dispatch(env: &Env, stdin: &[u8]) -> Result<Option<String>, CniError> {
    let command = env.command.as_deref().unwrap_or("");
    if command == "VERSION" {
        return Ok(Some(version::version_json(&requested_version(stdin))));
    }
    if !matches!(command, "ADD" | "DEL" | "CHECK" | "GC" | "STATUS") {
        return Err(CniError::new(
            Code::InvalidEnv,
            format!(
                "CNI_COMMAND: {} is not ADD, DEL, CHECK, GC, STATUS or VERSION",
                clip(command)
            ),
        ));
    }
    env.check_depth()?;
    let (conf, v) = NetConf::parse(stdin)?;
    // Every verb below works in the network's IPAM directory, named after
    // it: without a name or an IPAM section there is nothing to work on,
    // and nothing may be created on disk.
    if conf.name.is_empty() {
        return Err(invalid_config_path("name", "missing"));
    }
    conf.ipam()?;
    match command {
        "ADD" => add::add(env, &conf, v, stdin).map(|r| Some(r.to_string())),
        "DEL" => del::del(env, &conf, stdin).map(|_| None),
        "CHECK" => {
            require(v, Version::V0_4_0, "CHECK")?;
            check::check(env, &conf, stdin).map(|_| None)
        }
        "GC" => {
            require(v, Version::V1_1_0, "GC")?;
            gc::gc(env, &conf, stdin).map(|_| None)
        }
        _ => {
            require(v, Version::V1_1_0, "STATUS")?;
            gc::status(&conf).map(|_| None)
        }
    }
}

fn require(v: Version, min: Version, verb: &str) -> Result<(), CniError> {
    if v < min {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!("{verb} needs cniVersion {min} or later; the configuration says {v}"),
        ));
    }
    Ok(())
}

/// Kernel failures surface as code 100 with the operation named; a busy
/// lock or resource as 11 so runtimes retry.
pub(crate) fn kernel_err(what: &str) -> impl Fn(weft_kernel::KernelError) -> CniError + '_ {
    move |e| {
        let code = if e.errno() == Some(11) || e.errno() == Some(16) {
            Code::TryAgainLater
        } else {
            Code::Internal
        };
        CniError::new(code, format!("{what}: {e}"))
    }
}
