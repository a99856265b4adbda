//! Client threads. awc clients are not `Send`, so each thread owns one
//! [`MatrixClient`] on a single-threaded runtime, and work reaches a thread as
//! a closure that builds the (non-`Send`) future there. The coordinating code
//! stays on any tokio runtime and awaits results through channels, which is
//! also what lets the in-process test drive the bench from `#[tokio::test]`.

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use futures::future::LocalBoxFuture;
use tokio::sync::{mpsc, oneshot};

use crate::bench::client::{Endpoints, MatrixClient};

type Job = Box<dyn FnOnce(Rc<MatrixClient>) -> LocalBoxFuture<'static, ()> + Send>;

pub struct ClientPool {
    threads: Vec<mpsc::UnboundedSender<Job>>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

/// The job's thread stopped before answering (the pool shut down).
#[derive(Debug, thiserror::Error)]
#[error("client thread stopped")]
pub struct PoolStopped;

impl ClientPool {
    pub fn start(threads: usize, endpoints: Arc<Endpoints>) -> std::io::Result<ClientPool> {
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for index in 0..threads.max(1) {
            let (sender, mut receiver) = mpsc::unbounded_channel::<Job>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let endpoints = endpoints.clone();
            let handle = std::thread::Builder::new()
                .name(format!("bench-client-{index}"))
                .spawn(move || {
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&runtime, async move {
                        let client = Rc::new(MatrixClient::new(endpoints));
                        while let Some(job) = receiver.recv().await {
                            tokio::task::spawn_local(job(client.clone()));
                        }
                    });
                    // Dropping the LocalSet here cancels whatever still runs
                    // (sync loops blocked in a long poll).
                })?;
            senders.push(sender);
            handles.push(handle);
        }
        Ok(ClientPool {
            threads: senders,
            handles,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Runs `work` on client thread `key % threads` and answers its result.
    pub fn run<T, F, Fut>(
        &self,
        key: usize,
        work: F,
    ) -> impl Future<Output = Result<T, PoolStopped>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(Rc<MatrixClient>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |client| {
            Box::pin(async move {
                let _ = reply.send(work(client).await);
            })
        });
        let sent = self.threads[key % self.threads.len()].send(job).is_ok();
        async move {
            if !sent {
                return Err(PoolStopped);
            }
            answer.await.map_err(|_| PoolStopped)
        }
    }

    /// Stops every thread, cancelling what still runs on them.
    pub async fn shutdown(self) {
        drop(self.threads);
        let handles = self.handles;
        let _ = tokio::task::spawn_blocking(move || {
            for handle in handles {
                let _ = handle.join();
            }
        })
        .await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_the_thread_its_key_picks() {
        let endpoints = Arc::new(Endpoints::new("http://127.0.0.1:9", &[], None));
        let pool = ClientPool::start(2, endpoints).unwrap();
        let name = |key| {
            pool.run(key, |_client| async {
                std::thread::current().name().map(str::to_owned)
            })
        };
        let (a, b, c) = (name(0).await, name(1).await, name(2).await);
        assert_eq!(a.unwrap().as_deref(), Some("bench-client-0"));
        assert_eq!(b.unwrap().as_deref(), Some("bench-client-1"));
        assert_eq!(c.unwrap().as_deref(), Some("bench-client-0"));
        pool.shutdown().await;
    }
}
