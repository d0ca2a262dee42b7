use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::serve::{Application, shutdown_signal};

use super::{EXIT_OK, ServeArgs};

pub(super) async fn run(config: Option<&Path>, args: ServeArgs) -> anyhow::Result<u8> {
    // Before anything is announced: a SIGTERM from then on always shuts down gracefully.
    let shutdown = shutdown_signal().context("cannot install the SIGTERM/SIGINT handlers")?;
    let app = match super::open_app(config).await? {
        Ok(app) => app,
        Err(code) => return Ok(code),
    };
    let mut settings = app.config.serve.clone();
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    let application = Application::build(app, settings).await?;
    // One write, so whoever reads the log for the address never sees half of it (`eprintln!`
    // writes each formatted piece to the unbuffered stderr on its own).
    let announcement = format!(
        "trueup serving on http://{} (/metrics, /healthz, /readyz); SIGTERM or Ctrl-C stops it\n",
        application.addr()
    );
    std::io::stderr()
        .lock()
        .write_all(announcement.as_bytes())
        .context("cannot write to stderr")?;
    application.run_until(shutdown).await?;
    Ok(EXIT_OK)
}
