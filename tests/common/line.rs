//! The simulated line BP01 (bagger + basket loader on loopback) and configs for it, shared by
//! the store-and-forward tests.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use ms5_edge::sim::{self, Machine, Override, SimHandle};

pub const PREFIX: &str = "ms5/bp01-demo";
pub const BAGGER: &str = "BP01.PACK.BAG1";
pub const LOADER: &str = "BP01.PACK.BAG1.BL";

/// Both simulators, on free loopback ports.
pub struct Line {
    pub bagger: SimHandle,
    pub loader: SimHandle,
}

pub async fn line() -> Line {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    Line {
        bagger: sim::start(Machine::Bagger, any).await.expect("bagger sim"),
        loader: sim::start(Machine::Loader, any).await.expect("loader sim"),
    }
}

/// The demo config for `line`, with the database in `data_dir`, a broker `url` (if any) and
/// extra `[mqtt]` lines (credentials, TLS files, `max_inflight`, …).
pub fn config_text(line: &Line, data_dir: &Path, url: Option<&str>, mqtt_extra: &str) -> String {
    let text = ms5_edge::demo::config_text(
        line.bagger.addr().port(),
        line.loader.addr().port(),
        &data_dir.display().to_string(),
        url,
    );
    text.replacen(
        "keep_alive_s = 10\n",
        &format!("keep_alive_s = 10\n{mqtt_extra}"),
        1,
    )
}

/// Parses a config text that must be valid.
pub fn config(text: &str) -> ms5_edge::config::Config {
    ms5_edge::config::load_str(text, "test.toml")
        .expect("test config is valid")
        .config
}

/// Holds the `running` bit (and nothing else).
pub fn hold_running(running: bool) -> Override {
    Override {
        running: Some(running),
        ..Override::default()
    }
}

/// The demo config with fast rules: a stop becomes downtime after 1 s and a high fault raises
/// its andon after 1 s (on the bagger).
pub fn fast_rules(text: &str) -> String {
    text.replacen("micro_stop_s = 30", "micro_stop_s = 1", 1).replacen(
        &format!("\n[[equipment]]\ncode = \"{LOADER}\""),
        &format!("\n[equipment.andon]\nraise_after_s = {{ high = 1 }}\n\n[[equipment]]\ncode = \"{LOADER}\""),
        1,
    )
}
