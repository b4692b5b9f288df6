from metasup.cli import main

main()
