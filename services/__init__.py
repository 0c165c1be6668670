"""PanDA's services, each a pure decision function inside a thin consumer loop, and the HTTP gateway."""
