from metasup.faces.cli.main import main

main()
