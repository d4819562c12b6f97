//! `xms-emulator --listen 127.0.0.1:8056 [--listen ADDR]... [--settle-ms N] [--token-ttl-s N] [--tls-ca-out FILE]`

use std::time::Duration;

use xms_emulator::{Emulator, State};

fn usage() -> ! {
    eprintln!(
        "usage: xms-emulator [--listen ADDR]... [--settle-ms N] [--token-ttl-s N] [--tls-ca-out FILE]\n\
         Serves the XMS API (basePath /v1) on every ADDR (default 127.0.0.1:8056), all\n\
         sharing one state: admin/admin, pool data_pool, gateway group gw1 (VIP 127.0.0.1),\n\
         folder csi-fs (100 GiB) shared as 127.0.0.1:/sdsfs/csi-fs/, client group k8s-nodes.\n\
         Admin: GET /emulator/state, GET|PUT /emulator/faults, POST /emulator/expire-tokens,\n\
         GET /emulator/exchanges.\n\
         --tls-ca-out FILE: serve HTTPS with a certificate from a private CA made at start,\n\
         whose certificate (PEM) is written to FILE for clients to trust."
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let mut listen = vec![];
    let mut ca_out = None;
    let mut state = State::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => listen.push(value()),
            "--tls-ca-out" => ca_out = Some(value()),
            "--settle-ms" => {
                state.settle_after =
                    Duration::from_millis(value().parse().unwrap_or_else(|_| usage()))
            }
            "--token-ttl-s" => {
                state.token_ttl = Duration::from_secs(value().parse().unwrap_or_else(|_| usage()))
            }
            _ => usage(),
        }
    }
    if listen.is_empty() {
        listen.push("127.0.0.1:8056".into());
    }
    let started = match &ca_out {
        Some(_) => Emulator::start_tls(&listen[0], state).await,
        None => Emulator::start_with(&listen[0], state).await,
    };
    let emulator = match started {
        Ok(e) => e,
        Err(e) => {
            eprintln!("xms-emulator: listening on {}: {e}", listen[0]);
            std::process::exit(1)
        }
    };
    if let (Some(file), Some(pem)) = (&ca_out, emulator.ca_pem()) {
        if let Err(e) = std::fs::write(file, pem) {
            eprintln!("xms-emulator: writing the CA to {file}: {e}");
            std::process::exit(1)
        }
    }
    let scheme = emulator.scheme();
    eprintln!("xms-emulator: serving {scheme}://{}/v1", emulator.addr());
    for addr in &listen[1..] {
        match emulator.add_listener(addr).await {
            Ok((_, a)) => eprintln!("xms-emulator: serving {scheme}://{a}/v1"),
            Err(e) => {
                eprintln!("xms-emulator: listening on {addr}: {e}");
                std::process::exit(1)
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
