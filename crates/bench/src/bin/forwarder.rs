//! `orchestrator-forwarder`: the bare forwarding proxy that `orchestrator-bench --peer
//! forwarder` starts (see `orchestrator_bench::forwarder`).

use clap::Parser;

// The same allocator as the `orchestrator` binary, so the two rows differ by their work alone.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Forwards every request to an upstream as it is: a floor for the gateway's cost.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9200")]
    listen: String,
    /// The upstream, `http://host:port`.
    #[arg(long)]
    upstream: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    eprintln!("forwarding {} to {}", listener.local_addr()?, args.upstream);
    orchestrator_bench::forwarder::serve(listener, &args.upstream).await
}
