//! One shutdown signal shared by the HTTP server, the engine's workers and the
//! demo generator (axum's `examples/graceful-shutdown`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Cloneable handle: any holder can trigger it, every holder can observe it.
#[derive(Clone, Debug)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    notify: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    /// A signal not yet triggered.
    pub fn new() -> Shutdown {
        Shutdown {
            flag: Arc::new(AtomicBool::new(false)),
            notify: Arc::new(watch::channel(false).0),
        }
    }

    /// Asks everything to stop.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.send_replace(true);
    }

    /// True once triggered; for threads that poll (timely workers).
    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Resolves once triggered; for async tasks.
    pub async fn wait(&self) {
        let mut rx = self.notify.subscribe();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Triggers on Ctrl-C or SIGTERM.
    pub fn trigger_on_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            let terminate = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let terminate = std::future::pending::<()>();
            tokio::select! {
                _ = ctrl_c => {},
                _ = terminate => {},
            }
            tracing::info!("shutdown signal received");
            this.trigger();
        });
    }
}
