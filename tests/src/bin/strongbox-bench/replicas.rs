//! Uploads through a gateway to storage-service with its index on PostgreSQL, one
//! replica and then two (issue 14), beside the same uploads to the one replica on SQLite.
//! Everything, the PostgreSQL server too, shares this machine's cores, so a second
//! replica cannot add throughput here: the rows say what the database and the spreading
//! cost, for a deployment to weigh against what replicas on machines of their own give.

use strongbox_proto::storage::v1::ListFilesRequest;
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use strongbox_tests::auth::with_bearer;
use tonic::transport::Channel;

use crate::Plan;
use crate::system::System;
use crate::transfers::{MIB, run, timed};
use crate::uploads::{Clients, delete_all, upload_grpc};

/// Larger files measure S3's copying, not the index: each file is a handful of index
/// writes whatever its size.
const LARGEST: u64 = 64 * MIB;

pub struct ReplicaRow {
    pub size: u64,
    pub concurrency: usize,
    pub rounds: u64,
    /// MiB/s through the gateway: one replica on SQLite, one on PostgreSQL, two on one
    /// PostgreSQL database.
    pub rates: [f64; 3],
}

impl ReplicaRow {
    /// Files stored per second in column `column`.
    pub fn files_per_second(&self, column: usize) -> f64 {
        self.rates[column] * MIB as f64 / self.size as f64
    }
}

pub async fn measure(system: &System, clients: &Clients, plan: &Plan) -> Vec<ReplicaRow> {
    let one = system.storage_replicas_on_postgres(1).await;
    let two = system.storage_replicas_on_postgres(2).await;
    let gateways = [
        clients.gateway.clone(),
        client(one.gateway.channel()),
        client(two.gateway.channel()),
    ];
    for gateway in &gateways {
        // Connections open and the signing key fetched before anything is timed.
        gateway
            .clone()
            .list_files(with_bearer(ListFilesRequest::default(), &clients.tokens[0]))
            .await
            .expect("the gateway answers");
    }
    let concurrency = plan.concurrency.iter().copied().max().unwrap_or(1);
    let mut rows = Vec::new();
    for &size in plan.sizes.iter().filter(|&&size| size <= LARGEST) {
        let rounds = (plan.least_per_measurement / (size * concurrency as u64)).max(1);
        let total = size * concurrency as u64 * rounds;
        let mut rates = [0.0; 3];
        for (column, gateway) in gateways.iter().enumerate() {
            let keys = run(concurrency, rounds, |index| {
                let token = clients.tokens[index / rounds as usize].clone();
                let (gateway, block) = (gateway.clone(), clients.block.clone());
                async move { upload_grpc(gateway, token, size, block).await.key }
            });
            let (elapsed, keys) = timed(keys).await;
            rates[column] = total as f64 / MIB as f64 / elapsed.as_secs_f64();
            delete_all(gateway.clone(), &clients.tokens, rounds as usize, keys).await;
        }
        let row = ReplicaRow {
            size,
            concurrency,
            rounds,
            rates,
        };
        println!("{}", crate::report::replicas_line(&row));
        rows.push(row);
    }
    one.stop().await;
    two.stop().await;
    rows
}

fn client(channel: Channel) -> StorageServiceClient<Channel> {
    StorageServiceClient::new(channel).max_decoding_message_size(16 * MIB as usize)
}
