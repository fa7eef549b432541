//! The whole system for the suites: auth-service, storage-service (local or S3) and
//! the gateway in front, with clients that only ever talk to the gateway.

use strongbox_proto::auth::v1::auth_service_client::AuthServiceClient;
use strongbox_proto::storage::v1::storage_service_client::StorageServiceClient;
use tonic::transport::Channel;

use crate::storage::{Backend, Stack, User};
use crate::{RunningService, reserve_port, until_stopped};

pub struct System {
    pub gateway: RunningService,
    pub gateway_config: gateway::Config,
    pub stack: Stack,
}

impl System {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut gateway::Config)) -> Self {
        Self::start_configured(backend, |_| {}, adjust).await
    }

    /// The system with storage-service's and the gateway's settings adjusted.
    pub async fn start_configured(
        backend: Backend,
        adjust_storage: impl FnOnce(&mut storage_service::Config),
        adjust: impl FnOnce(&mut gateway::Config),
    ) -> Self {
        Self::start_adjusted(backend, |_| {}, adjust_storage, adjust).await
    }

    /// The system with every service's settings adjusted.
    pub async fn start_adjusted(
        backend: Backend,
        adjust_auth: impl FnOnce(&mut auth_service::Config),
        adjust_storage: impl FnOnce(&mut storage_service::Config),
        adjust: impl FnOnce(&mut gateway::Config),
    ) -> Self {
        // The gateway's address must be known first: storage-service signs local
        // download links for it.
        let listener = reserve_port(0);
        let gateway_url = format!("http://{}", listener.local_addr().expect("an address"));
        let stack = Stack::start_with_auth(backend, adjust_auth, |config| {
            config.public_base_url = gateway_url.clone();
            adjust_storage(config);
        })
        .await;
        let mut gateway_config =
            gateway::Config::for_upstreams(stack.auth.service.url(), stack.storage.url());
        gateway_config.upstream_health_interval_seconds = 1;
        adjust(&mut gateway_config);
        let mut gateway = start_gateway(listener, gateway_config.clone());
        gateway.wait_until_serving().await;
        Self {
            gateway,
            gateway_config,
            stack,
        }
    }

    /// Stops the gateway and starts it again on the same port.
    pub async fn restart_gateway(&mut self) {
        let port = self.gateway.addr.port();
        self.gateway
            .stop()
            .await
            .expect("the gateway stops cleanly");
        self.gateway = start_gateway(reserve_port(port), self.gateway_config.clone());
        self.gateway.wait_until_serving().await;
    }

    pub fn url(&self) -> String {
        self.gateway.url()
    }

    /// A channel to the gateway whose connections come from `source`, another loopback
    /// address (127.0.0.2, 127.0.0.3, …): a different client, as far as the gateway's
    /// per-address limits can tell.
    pub fn channel_from(&self, source: std::net::Ipv4Addr) -> Channel {
        tonic::transport::Endpoint::from_shared(self.url())
            .expect("a valid URL")
            .local_address(Some(source.into()))
            .connect_lazy()
    }

    pub fn auth_client(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.gateway.channel())
    }

    /// A fresh user whose storage client talks to the gateway.
    pub async fn user(&self, name: &str) -> User {
        let mut user = self.stack.user(name).await;
        user.storage = StorageServiceClient::new(self.gateway.channel())
            .max_decoding_message_size(16 * 1024 * 1024);
        user
    }
}

pub fn start_gateway(listener: std::net::TcpListener, config: gateway::Config) -> RunningService {
    RunningService::start_with(listener, 2, move |listener, stopped| {
        gateway::run(config, listener, until_stopped(stopped))
    })
}
