//! A `trueup serve` running inside the test, on an ephemeral port, until the test stops it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use trueup::app::App;
use trueup::config::Config;
use trueup::serve::{Application, ServeError};
use trueup::store::Store;

pub struct TestServer {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The server's own store (closed once the server stopped).
    pub store: Arc<dyn Store>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

impl TestServer {
    /// Opens what `config` names and serves it on 127.0.0.1, port 0.
    pub async fn start(config: Config) -> Self {
        let mut settings = config.serve.clone();
        settings.listen = "127.0.0.1:0".parse().unwrap();
        let app = App::with_config(config).await.unwrap();
        let store = Arc::clone(&app.store);
        let application = Application::build(app, settings).await.unwrap();
        let base = format!("http://{}", application.addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(application.run_until(async {
            let _ = stopped.await;
        }));
        Self {
            base,
            store,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops it as SIGTERM does and waits until it has drained (runs, outbox worker, HTTP);
    /// how it ended.
    pub async fn shut_down(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("a server is stopped once");
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the server did not stop within 60 s")
            .expect("the server's task panicked")
    }

    /// [`TestServer::shut_down`], which must end well.
    pub async fn stop(self) {
        self.shut_down().await.unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A test that failed before stopping it: stop serving (nobody waits for the drain).
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
