use std::path::Path;

use crate::app::{App, AppError};
use crate::serve::{Application, shutdown_signal};

use super::{EXIT_ERROR, EXIT_OK, ServeArgs};

pub(super) async fn run(config: Option<&Path>, args: ServeArgs) -> anyhow::Result<u8> {
    let app = match App::open(config).await {
        Ok(app) => app,
        Err(AppError::Config(d) | AppError::Rules(d)) => {
            eprintln!("{d}");
            return Ok(EXIT_ERROR);
        }
        Err(e) => return Err(e.into()),
    };
    let mut settings = app.config.serve.clone();
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    let application = Application::build(app, settings).await?;
    eprintln!(
        "trueup serving on http://{} (/metrics, /healthz, /readyz); SIGTERM or Ctrl-C stops it",
        application.addr()
    );
    application.run_until(shutdown_signal()).await?;
    Ok(EXIT_OK)
}
