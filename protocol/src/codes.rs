//! Request and response codes (`remoting/protocol/RequestCode.java`, `ResponseCode.java`).

macro_rules! codes {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $value:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name {
            $($variant,)*
            /// A code this decoder has no name for.
            #[serde(untagged)]
            Other(i32),
        }

        impl $name {
            pub fn from_code(code: i32) -> Self {
                match code {
                    $($value => Self::$variant,)*
                    other => Self::Other(other),
                }
            }

            pub fn code(self) -> i32 {
                match self {
                    $(Self::$variant => $value,)*
                    Self::Other(code) => code,
                }
            }
        }
    };
}

codes! {
    /// What a request asks for.
    RequestCode {
        SendMessage = 10,
        PullMessage = 11,
        QueryMessage = 12,
        QueryConsumerOffset = 14,
        UpdateConsumerOffset = 15,
        UpdateAndCreateTopic = 17,
        ViewMessageById = 33,
        HeartBeat = 34,
        UnregisterClient = 35,
        ConsumerSendMsgBack = 36,
        EndTransaction = 37,
        GetConsumerListByGroup = 38,
        CheckTransactionState = 39,
        NotifyConsumerIdsChanged = 40,
        GetRouteinfoByTopic = 105,
        GetConsumerRunningInfo = 307,
        ConsumeMessageDirectly = 309,
        SendMessageV2 = 310,
        SendBatchMessage = 320,
        SendReplyMessage = 324,
        SendReplyMessageV2 = 325,
        LitePullMessage = 361,
        RecallMessage = 370,
        UpdateAndCreateSubscriptiongroup = 200,
        QueryAssignment = 400,
        PopMessage = 200050,
        AckMessage = 200051,
        PeekMessage = 200052,
        ChangeMessageInvisibletime = 200053,
        Notification = 200054,
        BatchAckMessage = 200151,
    }
}

codes! {
    /// How a request ended.
    ResponseCode {
        Success = 0,
        SystemError = 1,
        SystemBusy = 2,
        RequestCodeNotSupported = 3,
        TransactionFailed = 4,
        FlushDiskTimeout = 10,
        SlaveNotAvailable = 11,
        FlushSlaveTimeout = 12,
        MessageIllegal = 13,
        ServiceNotAvailable = 14,
        NoPermission = 16,
        TopicNotExist = 17,
        PullNotFound = 19,
        PullRetryImmediately = 20,
        PullOffsetMoved = 21,
        QueryNotFound = 22,
        SubscriptionNotExist = 24,
        NoMessage = 208,
        PollingFull = 209,
        PollingTimeout = 210,
        FlowControl = 215,
        NotLeaderForQueue = 501,
        GoAway = 1500,
    }
}

impl RequestCode {
    /// Requests a broker (or name server) sends to a client over the client's own connection.
    pub fn is_sent_to_clients(self) -> bool {
        matches!(
            self,
            Self::CheckTransactionState
                | Self::NotifyConsumerIdsChanged
                | Self::GetConsumerRunningInfo
                | Self::ConsumeMessageDirectly
                // RESET_CONSUMER_CLIENT_OFFSET, GET_CONSUMER_STATUS_FROM_CLIENT,
                // PUSH_REPLY_MESSAGE_TO_CLIENT
                | Self::Other(220 | 221 | 326)
        )
    }

    /// Requests whose body is one message's body.
    pub fn is_single_send(self) -> bool {
        matches!(
            self,
            Self::SendMessage
                | Self::SendMessageV2
                | Self::SendReplyMessage
                | Self::SendReplyMessageV2
        )
    }

    /// Requests whose successful response body holds stored messages.
    pub fn returns_messages(self) -> bool {
        matches!(
            self,
            Self::PullMessage | Self::LitePullMessage | Self::PopMessage | Self::PeekMessage
        )
    }
}

impl ResponseCode {
    /// Codes with which a send still stored the message.
    pub fn stored(self) -> bool {
        matches!(
            self,
            Self::Success
                | Self::FlushDiskTimeout
                | Self::SlaveNotAvailable
                | Self::FlushSlaveTimeout
        )
    }
}

/// The client language byte of a ROCKETMQ-serialized header, by its JSON name.
pub fn language_name(code: u8) -> &'static str {
    match code {
        0 => "JAVA",
        1 => "CPP",
        2 => "DOTNET",
        3 => "PYTHON",
        4 => "DELPHI",
        5 => "ERLANG",
        6 => "RUBY",
        7 => "OTHER",
        8 => "HTTP",
        9 => "GO",
        10 => "PHP",
        11 => "OMS",
        12 => "RUST",
        13 => "NODE_JS",
        _ => "UNKNOWN",
    }
}
