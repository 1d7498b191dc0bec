"""The core both protocols call: admission (a request becomes one `Target`, once), the router (`auto`,
cascades) and the executor (one model run: lease, preprocess, batch), and model descriptions."""
