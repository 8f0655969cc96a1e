//! What a typed line means: a slash command, or a message for the current
//! conversation.

/// A parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// A message for the current conversation.
    Say(&'a str),
    /// `/help`.
    Help,
    /// `/msg USER TEXT`: a direct message.
    Msg {
        /// To whom.
        user: &'a str,
        /// What.
        text: &'a str,
    },
    /// `/join ROOM`: join a room and make it current.
    Join(&'a str),
    /// `/rooms`.
    Rooms,
    /// `/who`.
    Who,
    /// `/history`: older messages of the current conversation.
    History,
    /// `/files`.
    Files,
    /// `/status`.
    Status,
    /// `/quit`: log out and stay offline.
    Quit,
    /// `/wifi SSID PASS`.
    Wifi {
        /// Network name.
        ssid: &'a str,
        /// Its password (may be empty for an open network).
        pass: &'a str,
    },
    /// `/server HOST[:PORT]` or `/server auto`.
    Server(&'a str),
    /// `/login USER`: asks for the passphrase (or device key) next.
    Login(&'a str),
    /// `/forget`: erase every setting.
    Forget,
    /// A command that needs something else: the usage to show.
    Usage(&'static str),
    /// Not a command.
    Unknown(&'a str),
}

/// The help text.
pub const HELP: &str = "\
Type a line to send it to the current conversation.
  /msg USER TEXT     direct message            /join ROOM     join and switch to a room
  /rooms             list rooms                /who           who is online
  /history           older messages here       /files         files shared with you
  /status            Wi-Fi, address, server    /quit          log out
Set-up (kept across restarts):
  /wifi SSID PASS    /server HOST[:PORT]|auto  /login USER    /forget";

/// Parses a line.
pub fn parse(line: &str) -> Command<'_> {
    let line = line.trim();
    let Some(rest) = line.strip_prefix('/') else { return Command::Say(line) };
    let (name, args) = rest.split_once(char::is_whitespace).map_or((rest, ""), |(n, a)| (n, a.trim()));
    let (first, tail) = args.split_once(char::is_whitespace).map_or((args, ""), |(f, t)| (f, t.trim()));
    match name {
        "help" | "?" => Command::Help,
        "msg" | "m" if !first.is_empty() && !tail.is_empty() => {
            Command::Msg { user: first.trim_start_matches('@'), text: tail }
        }
        "msg" | "m" => Command::Usage("/msg USER TEXT"),
        "join" | "j" if !first.is_empty() && tail.is_empty() => Command::Join(first.trim_start_matches('#')),
        "join" | "j" => Command::Usage("/join ROOM"),
        "rooms" => Command::Rooms,
        "who" => Command::Who,
        "history" => Command::History,
        "files" => Command::Files,
        "status" => Command::Status,
        "quit" | "exit" => Command::Quit,
        // The password may contain spaces: everything after the SSID.
        "wifi" if !first.is_empty() => Command::Wifi { ssid: first, pass: tail },
        "wifi" => Command::Usage("/wifi SSID PASS"),
        "server" if !first.is_empty() && tail.is_empty() => Command::Server(first),
        "server" => Command::Usage("/server HOST[:PORT] or /server auto"),
        "login" if !first.is_empty() && tail.is_empty() => Command::Login(first),
        "login" => Command::Usage("/login USER"),
        "forget" => Command::Forget,
        _ => Command::Unknown(name),
    }
}

/// Splits `host[:port]`; the port defaults to `default_port`. `None` if the port is not
/// a number or the host is empty.
pub fn host_port(text: &str, default_port: u16) -> Option<(&str, u16)> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => Some((host, port.parse().ok()?)),
        Some(_) => None,
        None if !text.is_empty() => Some((text, default_port)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_messages_are_told_apart() {
        assert_eq!(parse("hello there"), Command::Say("hello there"));
        assert_eq!(parse("  /help "), Command::Help);
        assert_eq!(parse("/msg @bob see you at 5"), Command::Msg { user: "bob", text: "see you at 5" });
        assert_eq!(parse("/msg bob"), Command::Usage("/msg USER TEXT"));
        assert_eq!(parse("/join #lab"), Command::Join("lab"));
        assert_eq!(parse("/join"), Command::Usage("/join ROOM"));
        assert_eq!(parse("/wifi Home Net pass word"), Command::Wifi { ssid: "Home", pass: "Net pass word" });
        assert_eq!(parse("/wifi OpenCafe"), Command::Wifi { ssid: "OpenCafe", pass: "" });
        assert_eq!(parse("/server 192.168.1.5:5000"), Command::Server("192.168.1.5:5000"));
        assert_eq!(parse("/login alice"), Command::Login("alice"));
        assert_eq!(parse("/login"), Command::Usage("/login USER"));
        assert_eq!(parse("/frobnicate"), Command::Unknown("frobnicate"));
        assert_eq!(parse("/quit"), Command::Quit);
    }

    #[test]
    fn host_and_port() {
        assert_eq!(host_port("10.0.0.2:5001", 5000), Some(("10.0.0.2", 5001)));
        assert_eq!(host_port("casataa.local", 5000), Some(("casataa.local", 5000)));
        assert_eq!(host_port("host:port", 5000), None);
        assert_eq!(host_port(":5000", 5000), None);
        assert_eq!(host_port("", 5000), None);
    }
}
