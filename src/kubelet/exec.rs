//! `kubectl exec` on the kubelet: `GET /exec/{namespace}/{pod}/{container}?command=...`
//! (Kubernetes' kubelet route and query: `command` once per word, `input`, `output`,
//! `error`, `tty`), upgraded to a WebSocket speaking Kubernetes' channel protocol
//! (`v5.channel.k8s.io`, which current kubectl asks for, or `v4.channel.k8s.io`) and
//! bridged to an engine exec session.
//!
//! Every binary message starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 the error
//! channel (one `Status` when the command ends: `Success`, or `NonZeroExitCode` with the
//! code, which kubectl exits with), 4 terminal resizes (`{"Width":80,"Height":24}`), and in
//! v5 255, the close signal (`[255, 0]`: stdin is done). The protocol's framing is pure
//! functions ([`frame`], [`parse_client_message`], [`exit_status`]), tested here; the
//! bridge owns no task: it runs inside the upgraded connection's future and ends with it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::runtime::{ContainerRuntime, ExecRequest, ExecSession, ExecStream, RuntimeError};
use super::server::{container_names, waiting_message, ServerState};
use crate::api::PodPhase;
use crate::apiserver::kube::status::KubeError;

/// The channel protocols served, preferred first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5's close signal: the next byte names the channel the client is done writing.
pub const CLOSE: u8 = 255;

/// How long the engine may take to report the exit code once the output has ended.
const EXIT_CODE_WAIT: Duration = Duration::from_secs(5);

/// One message to the client on `channel`.
pub fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel);
    out.extend_from_slice(data);
    out
}

/// What a client's binary message asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage {
    Stdin(Bytes),
    Resize {
        width: u16,
        height: u16,
    },
    /// The client will write no more on this channel.
    Close(u8),
    /// Empty, or on a channel a client does not write (ignored, as Kubernetes does).
    Ignored,
}

pub fn parse_client_message(data: &Bytes) -> Result<ClientMessage, String> {
    let Some((&channel, rest)) = data.split_first() else {
        return Ok(ClientMessage::Ignored);
    };
    match channel {
        STDIN => Ok(ClientMessage::Stdin(data.slice(1..))),
        RESIZE => {
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Size {
                width: u16,
                height: u16,
            }
            let size: Size = serde_json::from_slice(rest)
                .map_err(|e| format!("a resize message is {{\"Width\":W,\"Height\":H}}: {e}"))?;
            Ok(ClientMessage::Resize {
                width: size.width,
                height: size.height,
            })
        }
        CLOSE => match rest.first() {
            Some(&c) => Ok(ClientMessage::Close(c)),
            None => Err("a close signal names its channel".into()),
        },
        _ => Ok(ClientMessage::Ignored),
    }
}

/// The error channel's `Status` for a command that ended with `code`, in Kubernetes' words.
pub fn exit_status(command: &[String], code: Option<i64>) -> Value {
    match code {
        Some(0) => json!({"metadata": {}, "status": "Success"}),
        Some(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                command.join(" ")
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        None => json!({
            "metadata": {},
            "status": "Failure",
            "message": "the command's exit code is unknown: the engine did not report it",
            "reason": "InternalError",
        }),
    }
}

/// The command and the streams asked for, from the kubelet's query (Kubernetes' names).
pub fn exec_request(query: &[(String, String)]) -> Result<ExecRequest, KubeError> {
    let flag = |name: &str| {
        query
            .iter()
            .any(|(k, v)| k == name && matches!(v.as_str(), "1" | "true"))
    };
    let command: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if command.is_empty() {
        return Err(KubeError::bad_request(
            "you must specify at least 1 command",
        ));
    }
    let tty = flag("tty");
    let request = ExecRequest {
        command,
        stdin: flag("input"),
        stdout: flag("output"),
        // A terminal has one output stream.
        stderr: flag("error") && !tty,
        tty,
    };
    if !request.stdin && !request.stdout && !request.stderr {
        return Err(KubeError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    Ok(request)
}

pub(super) async fn exec<R: ContainerRuntime>(
    State(s): State<Arc<ServerState<R>>>,
    Path((namespace, name, container)): Path<(String, String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, KubeError> {
    let key = format!("{namespace}/{name}");
    let not_found = || KubeError::not_found("", "pods", &name);
    let pod = s.pods.get(&key).ok_or_else(not_found)?;
    let runtime = s
        .runtimes
        .get(&pod.spec.node_name)
        .ok_or_else(not_found)?
        .clone();
    if !container_names(&pod).contains(&container) {
        return Err(KubeError::new(
            404,
            "NotFound",
            format!("container {container:?} is not valid for pod {name:?}"),
        ));
    }
    // Everything that can be known without starting the command is checked before the
    // kind of upgrade: kubectl retries a refused WebSocket over SPDY, and the error it shows
    // is the second answer's.
    if pod.status != PodPhase::Running {
        return Err(KubeError::bad_request(waiting_message(&pod, &container)));
    }
    let request = exec_request(&query)?;
    let Ok(upgrade) = upgrade else {
        return Err(KubeError::bad_request(format!(
            "exec is served over a WebSocket ({}), as kubectl 1.30 and later ask for; not over SPDY",
            PROTOCOLS.join(" or ")
        )));
    };
    let session = runtime
        .exec_session(&pod.spec.node_name, &pod, &container, &request)
        .await
        .map_err(|e| match e {
            RuntimeError::EngineUnreachable(_) => KubeError::unavailable(e.to_string()),
            RuntimeError::Unsupported(m) => KubeError::bad_request(m),
            other => KubeError::new(500, "InternalError", other.to_string()),
        })?
        .ok_or_else(|| KubeError::bad_request(waiting_message(&pod, &container)))?;
    tracing::info!(pod = %key, container, command = ?request.command, tty = request.tty, "exec");
    Ok(upgrade
        .protocols(PROTOCOLS)
        .on_upgrade(move |socket| bridge(socket, session, runtime, request)))
}

/// Relays between the client's WebSocket and the engine's session until the command ends
/// (then its status goes on the error channel and the socket is closed) or the client goes.
async fn bridge<R: ContainerRuntime>(
    socket: WebSocket,
    session: ExecSession,
    runtime: R,
    request: ExecRequest,
) {
    let ExecSession {
        id,
        mut output,
        mut input,
    } = session;
    let (mut tx, mut rx) = socket.split();
    let mut stdin_open = request.stdin;
    loop {
        tokio::select! {
            chunk = output.next() => match chunk {
                Some(Ok((stream, data))) => {
                    let channel = match stream {
                        ExecStream::Stdout => STDOUT,
                        ExecStream::Stderr => STDERR,
                    };
                    if tx.send(Message::Binary(frame(channel, &data).into())).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(exec = %id, error = %e, "reading the command's output");
                    break;
                }
                None => break,
            },
            message = rx.next() => match message {
                Some(Ok(Message::Binary(data))) => match parse_client_message(&data) {
                    Ok(ClientMessage::Stdin(bytes)) if stdin_open => {
                        if input.write_all(&bytes).await.is_err() {
                            stdin_open = false;
                        }
                    }
                    Ok(ClientMessage::Resize { width, height }) if request.tty => {
                        if let Err(e) = runtime.exec_resize(&id, width, height).await {
                            tracing::debug!(exec = %id, error = %e, "resize");
                        }
                    }
                    Ok(ClientMessage::Close(STDIN)) if stdin_open => {
                        stdin_open = false;
                        let _ = input.shutdown().await;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(exec = %id, error = %e, "a client message ignored"),
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                // Pings are answered by the socket itself; text is not part of the protocol.
                Some(Ok(_)) => {}
            },
        }
    }
    let code = exit_code(&runtime, &id).await;
    let status = exit_status(&request.command, code).to_string();
    let _ = tx
        .send(Message::Binary(frame(ERROR, status.as_bytes()).into()))
        .await;
    let _ = tx
        .send(Message::Close(Some(CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
}

/// The exit code, once the engine reports the command as ended (bounded wait).
async fn exit_code<R: ContainerRuntime>(runtime: &R, id: &str) -> Option<i64> {
    let deadline = tokio::time::Instant::now() + EXIT_CODE_WAIT;
    loop {
        match runtime.exec_exit_code(id).await {
            Ok(Some(code)) => return Some(code),
            Ok(None) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(exec = %id, error = %e, "reading the exit code");
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn frames_carry_their_channel_first() {
        assert_eq!(frame(STDOUT, b"hi\n"), b"\x01hi\n");
        assert_eq!(frame(ERROR, b""), b"\x03");
    }

    #[test]
    fn client_messages_parse_as_kubectl_sends_them() {
        let m = |b: &[u8]| parse_client_message(&Bytes::copy_from_slice(b));
        assert_eq!(
            m(b"\x00ls\n"),
            Ok(ClientMessage::Stdin(Bytes::from_static(b"ls\n")))
        );
        assert_eq!(
            m(b"\x04{\"Width\":120,\"Height\":40}"),
            Ok(ClientMessage::Resize {
                width: 120,
                height: 40
            })
        );
        assert_eq!(m(b"\xff\x00"), Ok(ClientMessage::Close(STDIN)));
        assert_eq!(m(b""), Ok(ClientMessage::Ignored));
        assert_eq!(m(b"\x01stray"), Ok(ClientMessage::Ignored));
        assert!(m(b"\x04{\"Width\":-1}").is_err());
        assert!(m(b"\xff").is_err());
    }

    #[test]
    fn the_exit_status_is_what_kubectl_reads_its_exit_code_from() {
        let cmd = vec!["sh".to_string(), "-c".to_string(), "exit 3".to_string()];
        assert_eq!(exit_status(&cmd, Some(0))["status"], "Success");
        let failed = exit_status(&cmd, Some(3));
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        assert_eq!(
            failed["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
    }

    #[test]
    fn the_query_names_the_command_and_its_streams() {
        let r = exec_request(&pairs(&[
            ("command", "sh"),
            ("command", "-c"),
            ("command", "echo hi"),
            ("output", "1"),
            ("error", "1"),
        ]))
        .expect("valid");
        assert_eq!(r.command, ["sh", "-c", "echo hi"]);
        assert!(r.stdout && r.stderr && !r.stdin && !r.tty);
        // A terminal merges stderr into its one stream.
        let t = exec_request(&pairs(&[
            ("command", "sh"),
            ("input", "1"),
            ("output", "1"),
            ("error", "1"),
            ("tty", "1"),
        ]))
        .expect("valid");
        assert!(t.tty && t.stdin && !t.stderr);
        assert!(exec_request(&pairs(&[("output", "1")])).is_err());
        assert!(exec_request(&pairs(&[("command", "ls")])).is_err());
    }
}
