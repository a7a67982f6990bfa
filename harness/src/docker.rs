//! Cleaning up after a kubelet with the Docker runtime: its containers carry the label
//! `miniku.node=<node>`.

use std::process::Command;

/// Removes (`docker rm -f`) every container, running or not, of `node`. Best effort: a
/// missing engine or a failed command leaves the containers.
pub fn remove_node_containers(node: &str) {
    let listed = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=miniku.node={node}"),
        ])
        .output();
    let Ok(listed) = listed else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output();
    }
}
