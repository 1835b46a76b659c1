"""One module per `cast-video` command; see `cast_video.cli`."""
