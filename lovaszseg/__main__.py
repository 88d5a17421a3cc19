from lovaszseg.cli import app

app(prog_name="lovaszseg")
