//! A blocking client of the control socket (what the CLI subcommands use).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::protocol::{Request, Response};

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot reach the daemon at {} (is it running? --control names another socket)", .0.display())]
    Connect(PathBuf, #[source] io::Error),
    /// Reading or writing failed.
    #[error("talking to the daemon failed")]
    Io(#[from] io::Error),
    /// The daemon closed the connection without an answer.
    #[error("the daemon closed the connection")]
    Closed,
    /// An answer that is not the protocol's.
    #[error("the daemon's answer does not parse")]
    Protocol(#[from] serde_json::Error),
    /// The daemon refused the request.
    #[error("{0}")]
    Refused(String),
}

/// A connection to the control socket.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the control socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream =
            UnixStream::connect(path).map_err(|e| ClientError::Connect(path.to_owned(), e))?;
        Ok(Client {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// Sends `request` and returns the result.
    pub fn call(&mut self, request: &Request) -> Result<serde_json::Value, ClientError> {
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(ClientError::Closed);
        }
        match serde_json::from_str(&answer)? {
            Response::Ok(value) => Ok(value),
            Response::Error(message) => Err(ClientError::Refused(message)),
        }
    }

    /// Sends `request` and returns the reader of what follows the answer (a capture's
    /// pcapng stream) with the answer.
    pub fn stream(
        mut self,
        request: &Request,
    ) -> Result<(serde_json::Value, BufReader<UnixStream>), ClientError> {
        let value = self.call(request)?;
        Ok((value, self.reader))
    }

    /// Sends `request` and decodes the result as `T`.
    pub fn get<T: serde::de::DeserializeOwned>(
        &mut self,
        request: &Request,
    ) -> Result<T, ClientError> {
        Ok(serde_json::from_value(self.call(request)?)?)
    }
}
