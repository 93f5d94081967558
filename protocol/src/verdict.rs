//! How a response says its request ended, for remoting and gRPC alike: the one place that reads
//! response codes, so that nothing downstream knows either protocol's codes.

use crate::{
    Command, RequestCode, ResponseCode, Wire,
    grpc::{grpc_status_name, proto::Code},
};

/// What a response says of its request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// `error_type` is the code's name: RocketMQ's (`CODE_n` for one without a name), or
    /// `GRPC_` and gRPC's own status where a call failed below RocketMQ.
    Failed {
        error_type: String,
        message: Option<String>,
    },
}

/// The gRPC method of a call and the service it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rpc {
    pub service: &'static str,
    pub method: &'static str,
}

impl Command {
    /// What this response says of its request (paired: `request_code` set). Nothing new is not
    /// a failure of a pull or a receive.
    pub fn verdict(&self) -> Verdict {
        if self.wire == Wire::Grpc {
            return self.grpc_verdict();
        }
        let code = ResponseCode::from_code(self.header.code);
        let is_send = self
            .request_code
            .is_some_and(|c| c.is_single_send() || c == RequestCode::SendBatchMessage);
        let pulled = self.request_code.is_some_and(RequestCode::returns_messages);
        let ok = if is_send {
            code.stored()
        } else if pulled {
            matches!(
                code,
                ResponseCode::Success
                    | ResponseCode::PullNotFound
                    | ResponseCode::PullRetryImmediately
                    | ResponseCode::NoMessage
                    | ResponseCode::PollingTimeout
            )
        } else {
            code == ResponseCode::Success
        };
        if ok {
            return Verdict::Ok;
        }
        let error_type = match code {
            ResponseCode::Other(n) => format!("CODE_{n}"),
            named => serde_json::to_value(named)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_else(|| format!("{named:?}")),
        };
        Verdict::Failed {
            error_type,
            message: self.header.remark.clone(),
        }
    }

    /// A call's verdict: RocketMQ's `Status.code` (or, below 100, gRPC's own status).
    fn grpc_verdict(&self) -> Verdict {
        let code = self.header.code;
        let nothing_new = self.request_code == Some(RequestCode::PopMessage)
            && code == Code::MessageNotFound as i32;
        if code == Code::Ok as i32 || nothing_new {
            return Verdict::Ok;
        }
        let error_type = match u32::try_from(code) {
            Ok(status) if status < 100 => format!("GRPC_{}", grpc_status_name(status)),
            _ => Code::try_from(code)
                .map(|c| c.as_str_name().to_string())
                .unwrap_or_else(|_| format!("CODE_{code}")),
        };
        Verdict::Failed {
            error_type,
            message: self.header.remark.clone(),
        }
    }

    /// The gRPC call of a request (None for remoting).
    pub fn rpc(&self) -> Option<Rpc> {
        self.call.as_ref().map(|call| Rpc {
            service: crate::grpc::SERVICE_NAME,
            method: call.method,
        })
    }
}
