//! An edge: the bounded queue into one shard's lane of a stage, and its policy when full.

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::config::WhenFull;
use crate::error::{PipelineError, Stage};

/// The sending side of one lane's queue, with the policy its stage declares.
pub(crate) struct Edge<T> {
    tx: mpsc::Sender<T>,
    /// The stage this edge feeds; named in `Overloaded` errors and metrics.
    pub stage: Stage,
    pub when_full: WhenFull,
}

impl<T> Clone for Edge<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            stage: self.stage,
            when_full: self.when_full,
        }
    }
}

/// Why an item was not handed on.
pub(crate) enum Refused<T> {
    /// The queue is full and the policy is `block`: wait for room, then send.
    Wait(T),
    /// The queue is full and the policy is `shed`: end the request with `Overloaded`.
    Shed(T),
    /// The receiving lane is gone.
    Closed(T),
}

impl<T> Edge<T> {
    pub fn new(tx: mpsc::Sender<T>, stage: Stage, when_full: WhenFull) -> Self {
        Self { tx, stage, when_full }
    }

    /// Tries the next queue at once; when it is full, says what the policy wants done.
    pub fn send_with_shed(&self, item: T) -> Result<(), Refused<T>> {
        match self.tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(item)) => match self.when_full {
                WhenFull::Shed => Err(Refused::Shed(item)),
                WhenFull::Block => Err(Refused::Wait(item)),
            },
            Err(TrySendError::Closed(item)) => Err(Refused::Closed(item)),
        }
    }

    /// Waits for room (cancel-safe: nothing is lost if the wait is abandoned).
    pub async fn reserve(&self) -> Result<mpsc::Permit<'_, T>, PipelineError> {
        self.tx.reserve().await.map_err(|_| PipelineError::Closed)
    }

    /// Reserves a slot under the edge's policy: `shed` fails at once when full, `block` waits.
    pub async fn reserve_with_shed(&self) -> Result<mpsc::Permit<'_, T>, PipelineError> {
        match self.tx.try_reserve() {
            Ok(permit) => Ok(permit),
            Err(TrySendError::Full(())) => match self.when_full {
                WhenFull::Shed => Err(PipelineError::Overloaded { stage: self.stage }),
                WhenFull::Block => self.reserve().await,
            },
            Err(TrySendError::Closed(())) => Err(PipelineError::Closed),
        }
    }
}
