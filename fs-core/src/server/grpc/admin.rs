//! The `Admin` service: volumes, tokens, quotas, usage, claims and garbage collection, for callers
//! with an account token.

use tonic::Request;

use super::*;

#[tonic::async_trait]
impl pb::admin_server::Admin for MetaService {
    async fn create_volume(&self, req: Request<pb::CreateVolumeRequest>) -> R<pb::VolumeInfo> {
        self.call("admin_create_volume", async {
            self.admin(&req)?;
            self.srv.create_volume(req.into_inner()).await
        })
        .await
    }

    async fn list_volumes(&self, req: Request<pb::Empty>) -> R<pb::ListVolumesReply> {
        self.call("admin_list_volumes", async {
            self.admin(&req)?;
            let mut volumes: Vec<pb::VolumeInfo> = self.srv.volumes().iter().map(|v| v.info()).collect();
            volumes.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(pb::ListVolumesReply { volumes })
        })
        .await
    }

    async fn delete_volume(&self, req: Request<pb::VolumeRef>) -> R<pb::Empty> {
        self.call("admin_delete_volume", async {
            self.admin(&req)?;
            self.srv.delete_volume(&req.get_ref().volume).await?;
            Ok(pb::Empty {})
        })
        .await
    }

    async fn update_volume(&self, req: Request<pb::UpdateVolumeRequest>) -> R<pb::VolumeInfo> {
        self.call("admin_update_volume", async {
            self.admin(&req)?;
            self.srv.update_volume(req.into_inner()).await
        })
        .await
    }

    async fn create_token(&self, req: Request<pb::CreateTokenRequest>) -> R<pb::CreateTokenReply> {
        self.call("admin_create_token", async {
            self.admin(&req)?;
            self.srv.create_token(req.into_inner()).await
        })
        .await
    }

    async fn list_tokens(&self, req: Request<pb::VolumeRef>) -> R<pb::ListTokensReply> {
        self.call("admin_list_tokens", async {
            self.admin(&req)?;
            Ok(pb::ListTokensReply { tokens: self.srv.list_tokens(&req.get_ref().volume)? })
        })
        .await
    }

    async fn revoke_token(&self, req: Request<pb::RevokeTokenRequest>) -> R<pb::Empty> {
        self.call("admin_revoke_token", async {
            self.admin(&req)?;
            let r = req.into_inner();
            self.srv.revoke_token(&r.volume, &r.id).await?;
            Ok(pb::Empty {})
        })
        .await
    }

    async fn create_account_token(&self, req: Request<pb::CreateAccountTokenRequest>) -> R<pb::CreateTokenReply> {
        self.call("admin_create_account_token", async {
            self.admin(&req)?;
            self.srv.create_account_token(req.into_inner().comment).await
        })
        .await
    }

    async fn set_quota(&self, req: Request<pb::SetQuotaRequest>) -> R<pb::Empty> {
        self.call("admin_set_quota", async {
            self.admin(&req)?;
            self.srv.set_quota(req.into_inner()).await?;
            Ok(pb::Empty {})
        })
        .await
    }

    async fn usage(&self, req: Request<pb::VolumeRef>) -> R<pb::UsageReply> {
        self.call("admin_usage", async {
            self.admin(&req)?;
            self.srv.usage(&req.get_ref().volume)
        })
        .await
    }

    async fn gc(&self, req: Request<pb::GcRequest>) -> R<pb::GcReply> {
        self.call("admin_gc", async {
            self.admin(&req)?;
            let r = req.into_inner();
            self.srv.gc(&r.volume, r.dry_run).await
        })
        .await
    }

    async fn create_claim(&self, req: Request<pb::CreateClaimRequest>) -> R<pb::CreateClaimReply> {
        self.call("admin_create_claim", async {
            self.admin(&req)?;
            self.srv.create_claim(req.into_inner()).await
        })
        .await
    }

    async fn delete_claim(&self, req: Request<pb::DeleteClaimRequest>) -> R<pb::Empty> {
        self.call("admin_delete_claim", async {
            self.admin(&req)?;
            let r = req.into_inner();
            self.srv.delete_claim(&r.volume, &r.path).await?;
            Ok(pb::Empty {})
        })
        .await
    }
}
